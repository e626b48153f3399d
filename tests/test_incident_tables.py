"""The incident tables (jobs/incident_tables.py) on SQLite and a real PostgreSQL: replays change nothing."""

from __future__ import annotations

import json
import sqlite3

import numpy as np

from incidents import IncidentState, Scored, StreamKey, parse_settings, process
from jobs.config import JdbcConfig
from jobs.incident_tables import INCIDENT_COLUMNS, INCIDENT_EVENT_COLUMNS, IncidentTables
from jobs.jdbc import JdbcTable

PASSWORD_ENV = "ANOMALY_TEST_PG_PASSWORD"
T0 = 1_704_067_200_000


def transitions() -> list[str]:
    """An incident opened, updated (worse), resolved; and a second one opened: as JSON texts."""
    probs = [0.5, 0.9991, 0.999999, 0.5, 0.5, 0.9999]
    flags = [p > 0.99 for p in probs]
    n = len(probs)
    scored = Scored(["a"], ["ema"], np.zeros(n, dtype=int), np.zeros(n, dtype=int), T0 + 60_000 * np.arange(n),
                    np.arange(n, dtype=float), np.zeros(n), np.full(n, np.nan), np.array(probs), np.array(flags),
                    np.array([None, '{"kind":"spike"}', None, None, None, None], dtype=object))
    settings = parse_settings({"resolve_after": 2, "merge_gap_millis": 0})
    records = process(IncidentState.for_settings(settings), settings, StreamKey("avg", 60_000), scored, T0).records
    assert [r["transition"] for r in records] == ["opened", "updated", "resolved", "opened"]
    return [json.dumps(r) for r in records]


def check(rows_incidents: list[tuple], rows_events: list[tuple], texts: list[str]) -> None:
    records = [json.loads(t) for t in texts]
    assert [tuple(str(v) for v in row) for row in rows_events] == [
        tuple(str(r[c]) for c in INCIDENT_EVENT_COLUMNS)
        for r in sorted(records, key=lambda r: (r["incident_id"], r["seq"]))
    ]
    latest = {}
    for r in records:
        latest[r["incident_id"]] = {**r, "last_seq": r["seq"]}
    assert sorted(tuple(str(v) for v in row) for row in rows_incidents) == sorted(
        tuple(str(r[c]) for c in INCIDENT_COLUMNS) for r in latest.values())


def write_with_replays(tables: IncidentTables, texts: list[str]) -> None:
    tables.ensure_schema()
    tables.ensure_schema()  # a restart: nothing to do
    assert tables.write(texts[:1]) == 1
    assert tables.write(texts[1:]) == 3
    tables.write(texts[1:])  # the batch replayed after a crash
    tables.write(texts[:1])  # an older batch again: the incident row does not go back
    assert tables.write([]) == 0


def test_sqlite_upserts_and_replays(spark, tmp_path):
    texts = transitions()
    db = tmp_path / "r.db"
    write_with_replays(IncidentTables(JdbcTable(spark, JdbcConfig(f"jdbc:sqlite:{db}"), "t")), texts)
    con = sqlite3.connect(db)
    check(con.execute(f"SELECT {', '.join(INCIDENT_COLUMNS)} FROM incidents").fetchall(),
          con.execute(
              f"SELECT {', '.join(INCIDENT_EVENT_COLUMNS)} FROM incident_events ORDER BY incident_id, seq"
          ).fetchall(),
          texts)


def test_postgresql_upserts_and_replays(spark, postgres, monkeypatch):
    import psycopg

    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    texts = transitions()
    jdbc = JdbcTable(spark, JdbcConfig(postgres.jdbc_url, "predictions", postgres.user, PASSWORD_ENV), "t")
    postgres.psql("DROP TABLE IF EXISTS incidents; DROP TABLE IF EXISTS incident_events")
    write_with_replays(IncidentTables(jdbc), texts)
    times = {"opened_at", "event_ts", "resolved_at", "peak_ts"}

    def shaped(columns: tuple[str, ...]) -> str:  # timestamptz read back in the records' text form
        return ", ".join(f"to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')" if c in times
                         else c for c in columns)

    with psycopg.connect(postgres.dsn, password=postgres.password) as conn:
        incidents = conn.execute(f"SELECT {shaped(INCIDENT_COLUMNS)} FROM incidents").fetchall()
        events = conn.execute(f"SELECT {shaped(INCIDENT_EVENT_COLUMNS)} FROM incident_events "
                              "ORDER BY incident_id, seq").fetchall()
    check(incidents, events, texts)
