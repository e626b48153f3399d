"""Incidents end to end through the real broker: Kafka -> job -> incidents topic + SQLite tables.

Two runs of the job from one checkpoint. Run 1: a spike on ``web`` (one
incident, opened and resolved), the same spike on ``db`` inside a
``freeze_model`` maintenance window (no incident; its detector does not see the
points), and a level shift on ``api`` (an incident). Run 2: ``new_normal``
feedback for ``api``'s incident (resolved, its detector re-learns from then),
plus a malformed feedback and one for an unknown incident (dead letters).
"""

from __future__ import annotations

import json
import math
import sqlite3

import pytest

from incidents import RECORD_FIELDS, incident_id
from incidents.machine import TOPIC_ONLY_FIELDS
from incidents.paging import ms_of
from jobs.config import parse_config
from jobs.main import run
from tests.stream_harness import T0_MS, msg
from tools.synthetic import consume_all, produce_messages

STEP_S = 10
WINDOW_MS = 60_000
TOPICS = ("inc-web", "inc-out", "inc-dlq", "inc-incidents", "inc-feedback")


def series(app: str, start_s: int, end_s: int) -> list[dict]:
    out = []
    for t in range(start_s, end_s, STEP_S):
        value = 100.0 + 5 * math.sin(t / 600.0) + (t % 30) / 10.0
        if app in ("web", "db") and 1200 <= t < 1260:
            value += 80.0
        if app == "api" and t >= 1500:
            value += 60.0
        out.append(msg(app, round(value, 3), t))
    return out


def job_config(bootstrap: str, tmp_path) -> dict:
    return {
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "trigger": "available_now",
        "streams": [
            {
                "name": "incidents",
                "source": {"bootstrap_servers": bootstrap, "topics": ["inc-web"], "feedback_topic": "inc-feedback"},
                "aggregation": {"agg_function": "avg", "agg_window_millis": WINDOW_MS,
                                "allowed_lateness_millis": 30_000},
                "detectors": [{"name": "ema", "params": {"window": 5, "warmup": 3}}],
                "sinks": {"output_topic": "inc-out", "dead_letter_topic": "inc-dlq",
                          "incidents_topic": "inc-incidents", "jdbc": {"url": f"jdbc:sqlite:{tmp_path}/r.db"}},
                "incidents": {
                    "resolve_after": 3,
                    # api's incident stays open until the feedback (a per-application override)
                    "overrides": [{"applications": "ap?", "resolve_after": 60}],
                    "maintenance": [{"name": "db-upgrade", "applications": "db", "from": "2024-01-01T00:19:00Z",
                                     "to": "2024-01-01T00:22:00Z", "freeze_model": True}],
                },
            }
        ],
    }


def table(con: sqlite3.Connection, sql: str) -> list[dict]:
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@pytest.mark.timeout(900)
def test_incidents_maintenance_and_feedback_end_to_end(kafka_broker, spark, tmp_path):
    bootstrap = kafka_broker.bootstrap_servers
    for topic in TOPICS:
        kafka_broker.create_topic(topic, partitions=2)
    config = parse_config(job_config(bootstrap, tmp_path))

    # -- run 1 ----------------------------------------------------------------------------
    produce_messages(bootstrap, "inc-web", series("web", 0, 1800) + series("db", 0, 1800) + series("api", 0, 1800))
    assert run(config, spark=spark) == 0
    con = sqlite3.connect(tmp_path / "r.db")
    first = {r["application"]: r for r in table(con, "SELECT * FROM incidents")}
    assert set(first) == {"web", "api"}, first  # db's spike was inside its maintenance window
    web_id = incident_id("web", "ema", "avg", WINDOW_MS, T0_MS + 1_200_000)
    assert first["web"]["incident_id"] == web_id and first["web"]["state"] == "resolved"
    assert first["web"]["opened_at"] == "2024-01-01T00:20:00.000Z" and first["web"]["resolution"] == "clean"
    assert first["api"]["opened_at"] == "2024-01-01T00:25:00.000Z" and first["api"]["state"] == "open"
    api_id = first["api"]["incident_id"]
    frozen = con.execute("SELECT anomaly_probability, is_anomaly, explanation, value_lower_limit FROM predictions "
                         "WHERE application = 'db' AND ts = '2024-01-01T00:20:00.000Z'").fetchone()
    assert frozen == (0.0, 0, '{"kind":"maintenance"}', None)

    # -- run 2: feedback, then more data ---------------------------------------------------
    feedback = [
        {"application": "api", "incident_id": api_id, "label": "new_normal", "ts": "2024-01-01T00:30:30Z",
         "by": "oncall", "comment": "new release doubles the rate"},
        {"application": "web", "incident_id": "0" * 32, "label": "expected"},
        {"application": "web", "incident_id": web_id, "label": "bogus"},
    ]
    produce_messages(bootstrap, "inc-feedback", feedback)
    produce_messages(bootstrap, "inc-web", series("web", 1800, 2400) + series("api", 1800, 2400))
    assert run(config, spark=spark) == 0

    incidents = {r["incident_id"]: r for r in table(con, "SELECT * FROM incidents")}
    events = table(con, "SELECT * FROM incident_events ORDER BY incident_id, seq")
    assert [(e["transition"], e["seq"]) for e in events if e["incident_id"] == web_id] == [
        ("opened", 1), ("resolved", 2)]
    api = incidents[api_id]
    assert (api["state"], api["resolution"], api["feedback"]) == ("resolved", "new_normal", "new_normal")
    assert api["resolved_at"] == "2024-01-01T00:30:30.000Z"
    # nothing new for api: its detector re-learned the new level (fresh, so no band while it warms up)
    assert [i["application"] for i in incidents.values()].count("api") == 1
    after = con.execute("SELECT value_lower_limit FROM predictions WHERE application = 'api' AND ts >= "
                        "'2024-01-01T00:30:00.000Z' ORDER BY ts LIMIT 1").fetchone()
    assert after == (None,)
    for row in incidents.values():  # the row is the last event of its incident
        last = [e for e in events if e["incident_id"] == row["incident_id"]][-1]
        assert row["last_seq"] == last["seq"]
        assert {k: row[k] for k in row if k != "last_seq"} == {k: last[k] for k in last if k not in ("seq",
                                                                                                  "transition")}

    # -- the topic: one record per transition, keyed by incident id, equal to the events table ----
    records = consume_all(bootstrap, "inc-incidents")
    values = [json.loads(r.value) for r in records]
    assert all(r.key.decode() == v["incident_id"] for r, v in zip(records, values, strict=True))
    assert all(list(v) == list(RECORD_FIELDS) for v in values)
    # the tables hold every field but the topic-only ones (reopen_until: until when a clean resolve may reopen)
    assert {(v["incident_id"], v["seq"]): {k: v[k] for k in v if k not in TOPIC_ONLY_FIELDS} for v in values} == {
        (e["incident_id"], e["seq"]): e for e in events}
    web = sorted((v for v in values if v["incident_id"] == web_id), key=lambda v: v["seq"])
    assert web[0]["reopen_until"] is None
    assert ms_of(web[1]["reopen_until"]) - ms_of(web[1]["resolved_at"]) == 30 * 60_000  # the default merge gap

    # -- bad feedback: dead letters with a reason ------------------------------------------
    reasons = sorted(r.header("anomaly.reason").decode() for r in consume_all(bootstrap, "inc-dlq"))
    assert reasons == ["invalid_feedback", "unknown_incident"]
