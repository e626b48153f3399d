"""PostgreSQL sink: Kafka -> job -> PostgreSQL, replayed idempotently; schema checks; no password in any log."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest

from detectors import build_detector
from jobs.config import JdbcConfig, parse_config
from jobs.jdbc import JdbcError, JdbcSchemaError, JdbcTable
from jobs.main import run
from tests.stream_harness import T0_MS
from tests.test_e2e_kafka import expected_windows, series
from tools.repository import ResultsRepository
from tools.synthetic import produce_messages

WINDOW_MS = 60_000
LATENESS_MS = 30_000
EMA = {"window": 5, "warmup": 3}
ROBUST = {"window": 5, "warmup": 3}
PASSWORD_ENV = "ANOMALY_TEST_PG_PASSWORD"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def job_config(bootstrap: str, postgres, checkpoints, table: str = "predictions") -> dict:
    return {
        "checkpoint_dir": str(checkpoints),
        "trigger": "available_now",
        "streams": [
            {
                "name": "pg",
                "source": {"bootstrap_servers": bootstrap, "topics": ["pg-in"]},
                "aggregation": {
                    "agg_function": "avg",
                    "agg_window_millis": WINDOW_MS,
                    "allowed_lateness_millis": LATENESS_MS,
                },
                "detectors": [{"name": "ema", "params": EMA}, {"name": "robust", "params": ROBUST}],
                "sinks": {
                    "dead_letter_topic": "pg-dlq",
                    "jdbc": {
                        "url": postgres.jdbc_url,
                        "table": table,
                        "user": postgres.user,
                        "password_env": PASSWORD_ENV,
                    },
                },
            }
        ],
    }


def pg_rows(postgres, table: str = "predictions") -> dict[tuple, tuple]:
    import psycopg

    with psycopg.connect(postgres.dsn, password=postgres.password) as conn:
        rows = conn.execute(
            "SELECT application, detector, agg_function, agg_window_millis, ts, agg_value, "
            f"value_lower_limit, value_upper_limit, anomaly_probability, is_anomaly FROM {table}"
        ).fetchall()
    out = {}
    for app, det, function, window, ts, *values in rows:
        out[(app, det, function, window, (ts - EPOCH) // timedelta(milliseconds=1))] = tuple(values)
    assert len(out) == len(rows)
    return out


# -- capturing everything the job says --------------------------------------------------------
@contextmanager
def jvm_log(spark, level: str = "INFO") -> Iterator[object]:
    """Every log4j event of the JVM at ``level`` and above, into a java StringWriter (str() it)."""
    jvm = spark.sparkContext._jvm
    core = jvm.org.apache.logging.log4j.core
    levels = jvm.org.apache.logging.log4j.Level
    context = jvm.org.apache.logging.log4j.LogManager.getContext(False)
    config = context.getConfiguration()
    writer = jvm.java.io.StringWriter()
    layout = core.layout.PatternLayout.newBuilder().withPattern("%p %c: %m%n%ex").build()
    appender = core.appender.WriterAppender.createAppender(layout, None, writer, "secrets-test", False, True)
    appender.start()
    config.addAppender(appender)
    root = config.getRootLogger()
    old_level = root.getLevel()
    root.addAppender(appender, levels.toLevel(level), None)
    root.setLevel(levels.toLevel(level))
    context.updateLoggers()
    try:
        yield writer
    finally:
        root.removeAppender("secrets-test")
        root.setLevel(old_level)
        context.updateLoggers()
        appender.stop()


def jvm_stderr(spark) -> str:
    """What the JVM (and its Python workers) wrote to its stderr, when that is a file (pytest's capture)."""
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    if proc is None:
        return ""
    path = f"/proc/{proc.pid}/fd/2"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a terminal or a pipe: reading would block or steal
            return ""
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


@contextmanager
def all_output(spark, caplog, capsys) -> Iterator[list[str]]:
    """Python logging (root, INFO), sys.stdout/err, the JVM's log4j (INFO) and its stderr file."""
    texts: list[str] = []
    caplog.set_level(logging.INFO)
    before = len(jvm_stderr(spark))
    with jvm_log(spark) as writer:
        try:
            yield texts
        finally:
            captured = capsys.readouterr()
            texts.extend(
                [
                    caplog.text,
                    captured.out,
                    captured.err,
                    str(writer.toString()),
                    jvm_stderr(spark)[before:],
                ]
            )


def assert_no_secret(texts: list[str], secret: str) -> None:
    for i, text in enumerate(texts):
        assert secret not in text, f"password found in captured output #{i}"


# -- end to end ----------------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_kafka_to_postgres_replay_is_idempotent(kafka_broker, spark, postgres, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    bootstrap = kafka_broker.bootstrap_servers
    for topic in ("pg-in", "pg-dlq"):
        kafka_broker.create_topic(topic, partitions=2)
    messages = series("web", 0, 1500) + series("db", 0, 1500)
    produce_messages(bootstrap, "pg-in", messages)

    with all_output(spark, caplog, capsys) as output:
        assert run(parse_config(job_config(bootstrap, postgres, tmp_path / "ck1")), spark=spark) == 0
        first = pg_rows(postgres)
        # replay: the same input from a new checkpoint rewrites the same keys with the same values
        assert run(parse_config(job_config(bootstrap, postgres, tmp_path / "ck2")), spark=spark) == 0
        second = pg_rows(postgres)
    assert "[pg] batch" in output[0], "the job's progress log was not captured"
    assert "INFO org.apache.spark" in output[3], "Spark's log was not captured"
    assert_no_secret(output, postgres.password)

    # -- expected, computed without Spark -------------------------------------------------
    watermark = T0_MS + 1490 * 1000 - LATENESS_MS
    expected = {}
    for app, points in expected_windows(messages, watermark).items():
        for label, params in (("ema", EMA), ("robust", ROBUST)):
            det = build_detector(label, params)
            for start, value in points:
                r = det.update(start, value)
                key = (app, label, "avg", WINDOW_MS, start)
                expected[key] = (value, r.value_lower_limit, r.value_upper_limit, r.anomaly_probability, r.is_anomaly)
    assert len(expected) == 2 * 2 * 24
    assert set(first) == set(expected)
    for key, (value, lo, hi, prob, flag) in expected.items():
        g = first[key]
        assert g[0] == pytest.approx(value, rel=1e-12), key
        assert (g[1], g[2], g[4]) == (lo, hi, flag), key
        assert g[3] == pytest.approx(prob, abs=1e-15), key
    assert first[("web", "ema", "avg", WINDOW_MS, T0_MS + 1_200_000)][4] is True
    assert second == first

    # -- the read API over the same table ---------------------------------------------------
    repo = ResultsRepository(postgres.jdbc_url, "predictions", postgres.user, postgres.password)
    assert repo.get_applications() == ["db", "web"]
    web = repo.fetch("web", T0 + timedelta(minutes=10), "2024-01-01T00:20:00Z")
    assert [p.ts for p in web] == [T0 + timedelta(minutes=m) for m in range(10, 20) for _ in range(2)]
    for p in web:
        ms = (p.ts - EPOCH) // timedelta(milliseconds=1)
        value, lo, hi, prob, flag = first[(p.application, p.detector, p.agg_function, p.agg_window_millis, ms)]
        r = p.anomaly_results
        assert (p.agg_value, r.value_lower_limit, r.value_upper_limit, r.anomaly_probability, r.is_anomaly) == (
            value,
            lo,
            hi,
            prob,
            flag,
        )
    assert ResultsRepository.from_config(parse_config(job_config(bootstrap, postgres, tmp_path)).streams[0].sinks.jdbc)


# -- schema checks -------------------------------------------------------------------------------
GOOD_COLUMNS = (
    "application TEXT NOT NULL, ts TIMESTAMPTZ NOT NULL, agg_function TEXT NOT NULL, "
    "agg_window_millis BIGINT NOT NULL, agg_value DOUBLE PRECISION, detector TEXT NOT NULL, "
    "value_lower_limit DOUBLE PRECISION, value_upper_limit DOUBLE PRECISION, "
    "anomaly_probability DOUBLE PRECISION NOT NULL, is_anomaly BOOLEAN NOT NULL"
)
KEY = "application, detector, agg_function, agg_window_millis, ts"


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        ("CREATE TABLE {t} (application TEXT, ts TIMESTAMPTZ, value DOUBLE PRECISION)", "lacks columns"),
        (
            "CREATE TABLE {t} (" + GOOD_COLUMNS.replace("ts TIMESTAMPTZ", "ts TIMESTAMP") + f", UNIQUE ({KEY}))",
            "ts is timestamp without time zone (needs timestamp with time zone)",
        ),
        (
            "CREATE TABLE {t} (" + GOOD_COLUMNS.replace("is_anomaly BOOLEAN", "is_anomaly INT") + f", UNIQUE ({KEY}))",
            "is_anomaly is integer",
        ),
        (
            "CREATE TABLE {t} (" + GOOD_COLUMNS.replace("detector TEXT", "detector TEXT[]") + f", UNIQUE ({KEY}))",
            "detector is text[]",
        ),
        ("CREATE TABLE {t} (" + GOOD_COLUMNS + ")", "without a unique key"),
        ("CREATE TABLE {t} (" + GOOD_COLUMNS + ", UNIQUE (application, detector, ts))", "without a unique key"),
        (
            "CREATE TABLE {t} (" + GOOD_COLUMNS + f"); CREATE UNIQUE INDEX ON {{t}} ({KEY}) WHERE agg_value > 0",
            "without a unique key",
        ),
    ],
    ids=["missing-columns", "ts-without-tz", "flag-integer", "text-array", "no-key", "other-key", "partial-index"],
)
def test_incompatible_existing_table_is_refused(spark, postgres, monkeypatch, ddl, message, request):
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    table = "bad_" + request.node.callspec.id.replace("-", "_")
    postgres.psql(ddl.format(t=table))
    jdbc = JdbcTable(spark, JdbcConfig(postgres.jdbc_url, table, postgres.user, PASSWORD_ENV), "schema-test")
    with pytest.raises(JdbcSchemaError, match=f"table {table} exists") as info:
        jdbc.ensure_schema()
    assert message in str(info.value)
    # nothing was created next to the refused table
    tables = postgres.psql(f"SELECT relname FROM pg_class WHERE relname LIKE '{table}%' AND relkind = 'r'")
    assert tables.split() == [table]


def test_a_table_of_an_earlier_version_gets_the_new_column_or_a_clear_refusal(spark, postgres, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    # owned by the job's user: the explanation column is added, old rows stay
    postgres.psql(
        f"CREATE TABLE v1_mine ({GOOD_COLUMNS}, PRIMARY KEY ({KEY})); ALTER TABLE v1_mine OWNER TO {postgres.user}"
    )
    JdbcTable(spark, JdbcConfig(postgres.jdbc_url, "v1_mine", postgres.user, PASSWORD_ENV), "s").ensure_schema()
    columns = postgres.psql("SELECT column_name FROM information_schema.columns WHERE table_name = 'v1_mine'")
    assert "explanation" in columns.split()
    # owned by a DBA, the job may only write rows: refused, with the statement to run
    postgres.psql(
        f"CREATE TABLE v1_dba ({GOOD_COLUMNS}, PRIMARY KEY ({KEY})); "
        f"GRANT SELECT, INSERT, UPDATE ON v1_dba TO {postgres.user}"
    )
    jdbc = JdbcTable(spark, JdbcConfig(postgres.jdbc_url, "v1_dba", postgres.user, PASSWORD_ENV), "s")
    with pytest.raises(
        JdbcSchemaError, match=r"lacks column explanation .*ALTER TABLE v1_dba ADD COLUMN explanation TEXT"
    ):
        jdbc.ensure_schema()


def test_compatible_existing_table_is_accepted(spark, postgres, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    compatible = (
        GOOD_COLUMNS.replace("application TEXT", "application VARCHAR(200)").replace(
            "agg_value DOUBLE PRECISION", "agg_value NUMERIC"
        )
        + ", explanation VARCHAR(2000)"
    )
    # made by a DBA: the job's user may write rows but not add an index
    postgres.psql(
        f"CREATE TABLE ok_existing ({compatible}, extra TEXT); CREATE UNIQUE INDEX ON ok_existing ({KEY}); "
        f"GRANT SELECT, INSERT, UPDATE ON ok_existing TO {postgres.user}"
    )
    jdbc = JdbcTable(spark, JdbcConfig(postgres.jdbc_url, "ok_existing", postgres.user, PASSWORD_ENV), "s")
    jdbc.ensure_schema()
    row = ("web", T0_MS, "avg", 60_000, 1.5, "ema", None, None, 0.0, False)
    jdbc.upsert(spark.createDataFrame([row], pg_frame_schema()))
    jdbc.upsert(spark.createDataFrame([(*row[:4], 2.5, *row[5:])], pg_frame_schema()))
    assert postgres.psql("SELECT agg_value, extra IS NULL FROM ok_existing").split() == ["2.5|t"]


def test_sqlite_table_without_key_is_refused(spark, tmp_path):
    import sqlite3

    db = tmp_path / "r.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE preds (" + GOOD_COLUMNS.replace("TIMESTAMPTZ", "TEXT") + ")")
    jdbc = JdbcTable(spark, JdbcConfig(f"jdbc:sqlite:{db}", "preds"), "s")
    with pytest.raises(JdbcSchemaError, match="table preds exists without a unique key"):
        jdbc.ensure_schema()


# -- secrets ---------------------------------------------------------------------------------------
def test_wrong_password_never_surfaces(kafka_broker, spark, postgres, tmp_path, monkeypatch, caplog, capsys):
    wrong = "wrong-" + postgres.password[::-1]
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    config = parse_config(job_config(kafka_broker.bootstrap_servers, postgres, tmp_path / "ck", table="never"))
    with all_output(spark, caplog, capsys) as output:
        # the job: refused before its query starts
        with pytest.raises(JdbcError) as job_error:
            run(config, spark=spark)
        # Spark's JDBC writer, with the password among its options, fails the same way
        jdbc = JdbcTable(spark, config.streams[0].sinks.jdbc, "pg")
        with pytest.raises(JdbcError) as write_error:
            jdbc.write_staging(jdbc.staging_frame(spark.createDataFrame([], pg_frame_schema())))
    for err in (job_error.value, write_error.value):
        assert "password authentication failed" in str(err)
        assert err.__cause__ is None and err.__suppress_context__
        output.append(str(err))
    assert "writing the batch into the staging table" in str(write_error.value)
    assert "INFO org.apache.spark" in output[3], "Spark's log was not captured"
    assert_no_secret(output, wrong)
    assert_no_secret(output, postgres.password)
    # the masking itself, should a driver ever echo it
    assert jdbc.mask(f"bad password {wrong}!") == "bad password ***!"


def pg_frame_schema() -> str:
    return (
        "application string, ts_ms long, agg_function string, agg_window_millis long, agg_value double, "
        "detector string, value_lower_limit double, value_upper_limit double, anomaly_probability double, "
        "is_anomaly boolean"
    )


# -- database outage ----------------------------------------------------------------------------
def _pg_ctl(postgres, action: str) -> None:
    """Stop or start the fixture's server, as its OS user (the fixture keeps data in socket_dir/data)."""
    from tests.postgres_fixture import _as_server_user

    cmd = [*_as_server_user(), str(postgres.bin_dir / "pg_ctl"), "-D", str(postgres.socket_dir / "data"), "-w"]
    if action == "stop":
        cmd += ["-m", "fast", "stop"]
    else:
        cmd += ["-l", str(postgres.socket_dir / "server.log"), "start"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


@pytest.mark.timeout(600)
def test_database_outage_during_a_batch_is_retried_not_skipped(
    kafka_broker, spark, postgres, tmp_path, monkeypatch, caplog
):
    caplog.set_level(logging.WARNING, logger="anomaly.jdbc")
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    bootstrap = kafka_broker.bootstrap_servers
    kafka_broker.create_topic("pg-outage-in", partitions=2)
    messages = series("web", 0, 900)
    produce_messages(bootstrap, "pg-outage-in", messages)
    raw = job_config(bootstrap, postgres, tmp_path / "ck", table="predictions_outage")
    raw["streams"][0]["source"]["topics"] = ["pg-outage-in"]
    raw["streams"][0]["sinks"]["jdbc"]["write_retries"] = 6

    original = JdbcTable.merge_staging
    outages: list[float] = []

    def merge_during_outage(self) -> None:
        if not outages:  # the first merge finds the database gone; it comes back 3 s later
            outages.append(time.monotonic())
            _pg_ctl(postgres, "stop")
            threading.Timer(3.0, _pg_ctl, args=(postgres, "start")).start()
        original(self)

    monkeypatch.setattr(JdbcTable, "merge_staging", merge_during_outage)
    try:
        assert run(parse_config(raw), spark=spark) == 0
    finally:
        monkeypatch.undo()
    assert outages, "the outage was never injected"
    assert "write failed (attempt 1 of 7)" in caplog.text  # the batch was retried, not skipped
    rows = pg_rows(postgres, "predictions_outage")
    watermark = T0_MS + 890 * 1000 - LATENESS_MS
    windows = expected_windows(messages, watermark)["web"]
    assert len(windows) == 14
    expected = {("web", label, "avg", WINDOW_MS, start) for label in ("ema", "robust") for start, _ in windows}
    assert set(rows) == expected  # nothing skipped, nothing twice
    for (*_, start), row in rows.items():
        assert row[0] == pytest.approx(dict(windows)[start], rel=1e-12)
