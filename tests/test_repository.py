"""ResultsRepository over tables written by JdbcTable.upsert (SQLite and PostgreSQL), and its parsing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from jobs.config import JdbcConfig, parse_config
from tests.stream_harness import T0_MS
from tools.repository import Prediction, RepositoryError, ResultsRepository, to_utc

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
SCHEMA = (
    "application string, ts_ms long, agg_function string, agg_window_millis long, agg_value double, "
    "detector string, value_lower_limit double, value_upper_limit double, anomaly_probability double, "
    "is_anomaly boolean"
)
# operator-output rows: web at 0, 1 min, 2 min (+0.5 s); db at 1 min; one warming-up row (no bounds)
ROWS = [
    ("web", T0_MS + 60_000, "avg", 60_000, 10.5, "ema", 9.0, 12.0, 0.25, False),
    ("web", T0_MS, "avg", 60_000, 10.0, "ema", None, None, 0.0, False),
    ("web", T0_MS + 120_500, "avg", 60_000, 99.0, "ema", 9.5, 12.5, 0.999, True),
    ("web", T0_MS + 60_000, "avg", 60_000, 10.5, "robust", 8.0, 13.0, 0.1, False),
    ("db", T0_MS + 60_000, "max", 60_000, 3.0, "ema", 1.0, 5.0, 0.0, False),
]


def write_rows(spark, config: JdbcConfig, rows=ROWS) -> None:
    from jobs.jdbc import JdbcTable

    table = JdbcTable(spark, config, "repo-test")
    table.ensure_schema()
    table.upsert(spark.createDataFrame(rows, SCHEMA))


def check_repository(repo: ResultsRepository) -> None:
    assert repo.get_applications() == ["db", "web"]
    web = repo.fetch("web", T0, T0 + timedelta(hours=1))
    assert [(p.ts, p.detector) for p in web] == [
        (T0, "ema"),
        (T0 + timedelta(minutes=1), "ema"),
        (T0 + timedelta(minutes=1), "robust"),
        (T0 + timedelta(seconds=120, milliseconds=500), "ema"),
    ]
    assert all(p.ts.tzinfo is not None and p.ts.utcoffset() == timedelta(0) for p in web)
    first, spike = web[0], web[-1]
    assert first.anomaly_results.value_lower_limit is None and first.anomaly_results.is_anomaly is False
    assert spike == Prediction(
        application="web",
        ts=T0 + timedelta(seconds=120, milliseconds=500),
        agg_function="avg",
        agg_window_millis=60_000,
        agg_value=99.0,
        detector="ema",
        anomaly_results=spike.anomaly_results,
    )
    assert spike.to_message() == {
        "application": "web",
        "ts": "2024-01-01T00:02:00.500Z",
        "agg_function": "avg",
        "agg_window_millis": 60_000,
        "agg_value": 99.0,
        "detector": "ema",
        "anomaly_results": {
            "value_lower_limit": 9.5,
            "value_upper_limit": 12.5,
            "anomaly_probability": 0.999,
            "is_anomaly": True,
            "explanation": None,
        },
    }
    # inclusive from, exclusive to; ISO strings with Z or an offset; naive = UTC
    assert [p.ts for p in repo.fetch("web", "2024-01-01T00:01:00Z", "2024-01-01T00:02:00.500Z")] == [
        T0 + timedelta(minutes=1)
    ] * 2
    assert len(repo.fetch("web", "2024-01-01T01:01:00+01:00", datetime(2024, 1, 1, 0, 2, 0, 500_001))) == 3
    # sub-millisecond bounds: rows hold whole milliseconds
    assert repo.fetch("web", T0 + timedelta(seconds=120, microseconds=500_001), T0 + timedelta(hours=1)) == []
    assert repo.fetch("db", T0, T0 + timedelta(minutes=1)) == []
    assert [p.agg_function for p in repo.fetch("db", T0, T0 + timedelta(minutes=2))] == ["max"]
    assert repo.fetch("nope", T0, T0 + timedelta(hours=1)) == []


def test_sqlite_repository_over_upserted_rows(spark, tmp_path):
    config = JdbcConfig(url=f"jdbc:sqlite:{tmp_path}/results.db", table="preds")
    write_rows(spark, config)
    write_rows(spark, config, ROWS[:2])  # an upsert of known keys adds nothing
    repo = ResultsRepository.from_config(config)
    check_repository(repo)
    assert len(repo.fetch("web", T0, T0 + timedelta(hours=1))) == 4


def test_postgres_repository_over_upserted_rows(spark, postgres, monkeypatch):
    monkeypatch.setenv("REPO_TEST_PG_PASSWORD", postgres.password)
    config = JdbcConfig(
        url=postgres.jdbc_url, table="repo_preds", user=postgres.user, password_env="REPO_TEST_PG_PASSWORD"
    )
    write_rows(spark, config)
    write_rows(spark, config, ROWS[:2])
    check_repository(ResultsRepository.from_config(config))
    check_repository(ResultsRepository(postgres.jdbc_url, "repo_preds", postgres.user, postgres.password))
    # a JVM in another time zone than UTC would shift a timestamptz written through Spark: compare to SQL
    import psycopg

    with psycopg.connect(postgres.dsn, password=postgres.password) as conn:
        text = conn.execute(
            "SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS') FROM repo_preds "
            "WHERE application = 'web' AND is_anomaly"
        ).fetchone()
    assert text == ("2024-01-01 00:02:00.500",)


def test_wrong_password_is_masked_and_not_chained(postgres):
    repo = ResultsRepository(postgres.jdbc_url, "repo_preds", postgres.user, "not-the-password-xyzzy")
    with pytest.raises(RepositoryError) as info:
        repo.get_applications()
    assert "password authentication failed" in str(info.value)
    assert "xyzzy" not in str(info.value) and info.value.__cause__ is None
    assert "xyzzy" not in repr(repo)


def test_missing_sqlite_file_is_an_error_not_a_new_file(tmp_path):
    repo = ResultsRepository(f"jdbc:sqlite:{tmp_path}/absent.db")
    with pytest.raises(RepositoryError, match=r"absent\.db"):
        repo.get_applications()
    assert not (tmp_path / "absent.db").exists()


def test_from_config_reads_password_env_or_file(tmp_path, monkeypatch):
    secret = tmp_path / "pg.secret"
    secret.write_text("s3cret\n")
    raw = {
        "checkpoint_dir": "ck",
        "streams": [
            {
                "name": "s",
                "source": {"bootstrap_servers": "b:9092", "topics": ["t"]},
                "sinks": {
                    "dead_letter_topic": "d",
                    "jdbc": {
                        "url": "jdbc:postgresql://db.example:6543/anomaly?sslmode=require&ApplicationName=x",
                        "user": "job",
                        "password_file": "pg.secret",
                        "properties": {"currentSchema": "results"},
                    },
                },
            }
        ],
    }
    config = parse_config(raw, base_dir=tmp_path).streams[0].sinks.jdbc
    assert config.password_file == str(secret)
    params = ResultsRepository.from_config(config)._pg_params()
    assert params == {
        "host": "db.example",
        "port": "6543",
        "dbname": "anomaly",
        "sslmode": "require",
        "application_name": "x",
        "options": "-c search_path=results",
        "user": "job",
        "password": "s3cret",
    }
    monkeypatch.setenv("REPO_PW", "from-env")
    env_config = JdbcConfig(url="jdbc:postgresql://h1,h2:5433/db", user="u", password_env="REPO_PW")
    params = ResultsRepository.from_config(env_config)._pg_params()
    assert (params["host"], params["port"], params["password"]) == ("h1,h2", "5432,5433", "from-env")


@pytest.mark.parametrize(
    ("jdbc", "field", "leak"),
    [
        ({"url": "jdbc:postgresql://h/db?user=u&password=hunter2"}, "url", "hunter2"),
        ({"url": "jdbc:postgresql://h/db", "properties": {"password": "hunter2"}}, "properties.password", "hunter2"),
        ({"url": "jdbc:postgresql://h/db", "password_env": "A", "password_file": "f"}, "password_file", None),
        ({"url": "jdbc:postgresql://h/db", "password_env": "not a name"}, "password_env", None),
    ],
)
def test_config_keeps_passwords_out(jdbc, field, leak):
    from jobs.config import ConfigError

    raw = {
        "checkpoint_dir": "ck",
        "streams": [
            {
                "name": "s",
                "source": {"bootstrap_servers": "b:9092", "topics": ["t"]},
                "sinks": {"dead_letter_topic": "d", "jdbc": jdbc},
            }
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.field == f"streams[0].sinks.jdbc.{field}"
    if leak:
        assert leak not in str(info.value)


def test_timestamp_parsing():
    assert to_utc("2024-01-01T01:00:00+01:00") == T0
    assert to_utc("2024-01-01T00:00:00") == T0
    assert to_utc(datetime(2024, 1, 1)) == T0
    with pytest.raises(ValueError, match="from_ts"):
        to_utc("yesterday", "from_ts")
    with pytest.raises(ValueError, match="plain SQL identifier"):
        ResultsRepository("jdbc:sqlite:x.db", "preds; DROP TABLE x")


def test_a_table_written_before_explanations_reads_them_as_null(tmp_path):
    import sqlite3

    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as con:
        con.execute(
            "CREATE TABLE predictions (application TEXT, ts TEXT, agg_function TEXT, agg_window_millis INTEGER, "
            "agg_value REAL, detector TEXT, value_lower_limit REAL, value_upper_limit REAL, "
            "anomaly_probability REAL, is_anomaly INTEGER)"
        )
        con.execute(
            "INSERT INTO predictions VALUES ('web', '2024-01-01T00:00:00.000Z', 'avg', 60000, 1.0, 'ema', "
            "NULL, NULL, 0.5, 1)"
        )
    repo = ResultsRepository(f"jdbc:sqlite:{db}", "predictions")
    (row,) = repo.fetch("web", "2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z")
    assert row.anomaly_results.explanation is None and row.anomaly_results.is_anomaly is True
    assert row.to_message()["anomaly_results"]["explanation"] is None
