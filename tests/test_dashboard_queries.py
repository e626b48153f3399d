"""The dashboard's repository queries, on SQLite and PostgreSQL, with the same assertions."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from tools.repository import ResultsRepository

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
N = 6_000  # rows per (application, detector): one a minute
SPIKE = 4_321  # the index of the one spike of "web"
COLUMNS = (
    "application, ts, agg_function, agg_window_millis, agg_value, detector, "
    "value_lower_limit, value_upper_limit, anomaly_probability, is_anomaly"
)
APPS = ("web", "db", "50%_off", "<img src=x onerror=alert(1)>")


def rows() -> list[tuple]:
    out = []
    for a, app in enumerate(APPS):
        for detector in ("ema", "robust"):
            for i in range(N if app == "web" else 100):
                ts = T0 + timedelta(minutes=i + a)  # each app ends one minute later than the one before
                spike = app == "web" and i == SPIKE
                value = 1000.0 if spike else 10.0 + (i % 10)
                flagged = spike or (app == "db" and detector == "ema" and i in (10, 50))
                out.append((app, ts, "avg", 60_000, value, detector, 5.0, 25.0, 0.9999 if flagged else 0.1, flagged))
    return out


def sqlite_repo(tmp_path) -> ResultsRepository:
    db = tmp_path / "results.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE predictions (application TEXT, ts TEXT, agg_function TEXT, agg_window_millis INTEGER, "
        "agg_value REAL, detector TEXT, value_lower_limit REAL, value_upper_limit REAL, "
        "anomaly_probability REAL, is_anomaly INTEGER, explanation TEXT)"  # an extra column is tolerated
    )
    with con:
        con.executemany(
            f"INSERT INTO predictions ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(r[0], r[1].strftime("%Y-%m-%dT%H:%M:%S.000Z"), *r[2:9], int(r[9])) for r in rows()],
        )
    con.close()
    return ResultsRepository(f"jdbc:sqlite:{db}")


def postgres_repo(postgres) -> ResultsRepository:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres.dsn, password=postgres.password) as conn:
        conn.execute("DROP TABLE IF EXISTS dash_preds")
        conn.execute(
            "CREATE TABLE dash_preds (application TEXT, ts TIMESTAMPTZ, agg_function TEXT, agg_window_millis BIGINT, "
            "agg_value DOUBLE PRECISION, detector TEXT, value_lower_limit DOUBLE PRECISION, "
            "value_upper_limit DOUBLE PRECISION, anomaly_probability DOUBLE PRECISION, is_anomaly BOOLEAN, "
            "explanation TEXT)"
        )
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO dash_preds ({COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", rows())
    return ResultsRepository(postgres.jdbc_url, "dash_preds", postgres.user, postgres.password)


def check(repo: ResultsRepository) -> None:
    end = T0 + timedelta(minutes=N + 10)
    # applications: paging, sorting, search (a literal % and _ in the search match themselves only)
    assert repo.count_applications() == 4
    by_name = repo.application_summaries(T0, end, sort="name", limit=2)
    assert [s.application for s in by_name] == ["50%_off", "<img src=x onerror=alert(1)>"]
    assert [s.application for s in repo.application_summaries(T0, end, sort="name", offset=2, limit=2)] == [
        "db",
        "web",
    ]
    recent = repo.application_summaries(T0, end, sort="recent_anomaly")
    assert [s.application for s in recent][:2] == ["web", "db"]  # web's spike is later than db's anomalies
    web = next(s for s in recent if s.application == "web")
    assert web.anomalies == 2  # flagged results: the spike, by each detector
    assert web.last_value == 10.0 + (N - 1) % 10
    assert web.last_ts == T0 + timedelta(minutes=N - 1)
    assert [s.application for s in repo.application_summaries(T0, end, search="%_")] == ["50%_off"]
    assert repo.count_applications("IMG") == 1
    # a range that leaves db's anomalies out counts none of them
    db_late = repo.application_summaries(T0 + timedelta(minutes=60), end, search="db")[0]
    assert db_late.anomalies == 0 and db_late.last_anomaly_ts == T0 + timedelta(minutes=51)
    sparks = repo.sparklines(["web", "db"], T0, end, buckets=20)
    assert 15 <= len(sparks["web"]) <= 21 and all(isinstance(v, float) for _, v in sparks["web"])

    # series: every row when small, min/max per bucket when large; the spike survives either way
    raw = repo.series("db", T0, end)
    assert raw.bucket_ms is None and raw.rows == 200
    assert len(raw.lines[("avg", 60_000)]["ema"]["ts"]) == 100
    assert raw.anomalies[("avg", 60_000)]["ema"]["ts"] == [
        round((T0 + timedelta(minutes=m + 1)).timestamp() * 1000) for m in (10, 50)
    ]
    big = repo.series("web", T0, end, max_rows=1_000, buckets=100)
    assert big.rows == 2 * N and big.bucket_ms is not None
    ema = big.lines[("avg", 60_000)]["ema"]
    assert len(ema["ts"]) <= 2 * 101 and max(ema["value"]) == 1000.0 and min(ema["value"]) == 10.0
    spike_ms = round((T0 + timedelta(minutes=SPIKE)).timestamp() * 1000)
    for detector in ("ema", "robust"):
        assert big.anomalies[("avg", 60_000)][detector]["ts"] == [spike_ms]

    after = repo.rows_after("web", round((T0 + timedelta(minutes=N - 3)).timestamp() * 1000))
    assert [(p.ts, p.detector) for p in after] == [
        (T0 + timedelta(minutes=N - 2), "ema"),
        (T0 + timedelta(minutes=N - 2), "robust"),
        (T0 + timedelta(minutes=N - 1), "ema"),
        (T0 + timedelta(minutes=N - 1), "robust"),
    ]
    summary = repo.detector_summary("db", T0, end)
    assert [(d, n, a) for d, n, a, _, _ in summary] == [("ema", 100, 2), ("robust", 100, 0)]
    assert repo.time_range("db") == (T0 + timedelta(minutes=1), T0 + timedelta(minutes=100))


def test_dashboard_queries_sqlite(tmp_path):
    check(sqlite_repo(tmp_path))


def test_dashboard_queries_postgres(postgres):
    check(postgres_repo(postgres))


def test_sandbox_refuses_paths_outside_its_folder(tmp_path):
    from tools.sandbox import SandboxConfig, SandboxError, resolve_data_path, validate_params

    data = tmp_path / "data"
    (data / "f").mkdir(parents=True)
    (data / "f" / "a.csv").write_text("timestamp,value\n2024-01-01 00:00:00,1\n")
    (tmp_path / "secret.csv").write_text("timestamp,value\n")
    (data / "link.csv").symlink_to(tmp_path / "secret.csv")
    config = SandboxConfig(data, None)
    assert resolve_data_path(config, "f/a.csv") == (data / "f" / "a.csv").resolve()
    for bad in ("../secret.csv", str(tmp_path / "secret.csv"), "f/../../secret.csv", "link.csv", "f/x.csv", "a\0b"):
        with pytest.raises(SandboxError):
            resolve_data_path(config, bad)
    params, errors = validate_params("ema", {"window": "1", "threshold": "2"})
    assert params == {} and set(errors) == {"window", "threshold"}  # every bad field, not only the first
