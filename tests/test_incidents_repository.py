"""The incident tables' read client, on SQLite and on a real PostgreSQL, with the same assertions.

The tables are made with the job's column types (times as ISO-8601 text in SQLite, ``timestamptz``
in PostgreSQL) and filled with the rows tests/test_dashboard_incidents.py uses.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.test_dashboard_incidents import INCIDENTS, fill_incidents
from tools.incidents_repository import EVENT_FIELDS, INCIDENT_FIELDS, IncidentsRepository

_PG_TYPES = {
    **dict.fromkeys(("opened_at", "event_ts", "resolved_at", "peak_ts"), "TIMESTAMPTZ"),
    **dict.fromkeys(("seq", "agg_window_millis", "window_count", "last_seq"), "BIGINT"),
    **dict.fromkeys(("peak_probability", "peak_value", "value_lower_limit", "value_upper_limit"), "DOUBLE PRECISION"),
}


def _pg_tables(postgres) -> None:
    import psycopg

    with psycopg.connect(**postgres.connect_params) as conn:
        for table, fields, key in (("incidents", INCIDENT_FIELDS, "incident_id"),
                                   ("incident_events", EVENT_FIELDS, "incident_id, seq")):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            spec = ", ".join(f"{c} {_PG_TYPES.get(c, 'TEXT')}" for c in fields)
            conn.execute(f"CREATE TABLE {table} ({spec}, PRIMARY KEY ({key}))")
        for events in INCIDENTS:
            for e in events:
                conn.execute(f"INSERT INTO incident_events VALUES ({', '.join(['%s'] * len(EVENT_FIELDS))})",
                             tuple(e[c] for c in EVENT_FIELDS))
            last = {**events[-1], "last_seq": events[-1]["seq"]}
            conn.execute(f"INSERT INTO incidents VALUES ({', '.join(['%s'] * len(INCIDENT_FIELDS))})",
                         tuple(last[c] for c in INCIDENT_FIELDS))


@pytest.fixture(params=["sqlite", "postgresql"])
def repo(request, tmp_path):
    if request.param == "sqlite":
        db = tmp_path / "r.db"
        sqlite3.connect(db).close()
        empty = IncidentsRepository(f"jdbc:sqlite:{db}")
        assert not empty.available()
        con = sqlite3.connect(db)
        with con:
            fill_incidents(con)
        con.close()
        return IncidentsRepository(f"jdbc:sqlite:{db}")
    postgres = request.getfixturevalue("postgres")
    _pg_tables(postgres)
    return IncidentsRepository(postgres.jdbc_url, postgres.user, postgres.password)


def test_reads_are_the_same_on_both_databases(repo):
    assert repo.available()
    rows = repo.incidents()
    assert [(r["application"], r["state"]) for r in rows][:2] == [("checkout", "open"), ("auth", "open")]
    assert [r["state"] for r in rows][-2:] == ["resolved", "resolved"]
    first = INCIDENTS[1]
    one = repo.incident(first[0]["incident_id"])
    assert one is not None and one["last_seq"] == 2 and one["state"] == "resolved"
    assert one["opened_at"] == 1_709_281_800_000 and one["resolved_at"] == 1_709_281_800_000 + 12 * 60_000
    events = repo.events(first[0]["incident_id"])
    assert [(e["seq"], e["transition"]) for e in events] == [(1, "opened"), (2, "resolved")]
    assert [r["application"] for r in repo.incidents(state="resolved", application="auth")] == ["auth"]
    assert len(repo.incidents(severity="critical")) == 1
    with pytest.raises(ValueError, match="state must be one of"):
        repo.incidents(state="closed")
    auth = next(p for p in repo.precision() if p["application"] == "auth")
    assert (auth["labelled"], auth["true_positive"], auth["false_positive"], auth["precision"]) == (2, 1, 1, 0.5)
    assert repo.incident("f" * 32) is None
