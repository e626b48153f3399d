"""End to end through the real broker: Kafka -> job -> Kafka + SQLite, restarted once from its checkpoint."""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict

import numpy as np
import pytest

from detectors import build_detector
from jobs.config import parse_config
from jobs.main import run
from tests.stream_harness import T0_MS, msg
from tools.synthetic import consume_all, produce_messages

STEP_S = 10
WINDOW_MS = 60_000
LATENESS_MS = 30_000
EMA = {"window": 5, "warmup": 3}
ROBUST = {"window": 5, "warmup": 3}
BAD = {
    b"{not json": "invalid_json",
    b'{"application": "web", "value": "12", "ts": "2024-01-01T00:00:00Z"}': "wrong_type",
    b'{"application": "web", "value": 1}': "missing_field",
    b'{"application": "", "value": 1, "ts": "2024-01-01T00:00:00Z"}': "empty_application",
    b'{"application": "web", "value": 1, "ts": "soon"}': "ts_unparseable",
    b'{"application": "web", "value": 1, "ts": "2024-01-01T00:00:00"}': "ts_no_timezone",
    b'{"application": "web", "value": 1, "ts": "1960-01-01T00:00:00Z"}': "ts_out_of_range",
    b'{"application": "web", "value": 1, "ts": "2999-01-01T00:00:00Z"}': "ts_out_of_range",
    b'{"application": "web", "value": NaN, "ts": "2024-01-01T00:00:00Z"}': "invalid_json",
    b'{"application": "web", "value": 1e999, "ts": "2024-01-01T00:00:00Z"}': "value_not_finite",
    b'{"application": "web", "value": null, "ts": "2024-01-01T00:00:00Z"}': "null_field",
    b"\xff\xfe\x00garbage": "invalid_utf8",
    b"[1, 2, 3]": "not_an_object",
    b'{"application": "' + b"a" * 10_000 + b'", "value": 1, "ts": "2024-01-01T00:00:00Z"}': "invalid_application",
    b'{"application": "' + b"b" * 900_000 + b'", "value": 1, "ts": "2024-01-01T00:00:00Z"}': "invalid_application",
}


def series(app: str, start_s: int, end_s: int) -> list[dict]:
    """Deterministic values: a level per app, a slow wave, a spike at 20:00 for web."""
    base = {"web": 100.0, "db": 40.0}[app]
    out = []
    for t in range(start_s, end_s, STEP_S):
        value = base + 5 * math.sin(t / 600.0) + (t % 30) / 10.0
        if app == "web" and 1200 <= t < 1260:
            value += 80.0
        out.append(msg(app, round(value, 3), t))
    return out


def tombstone(bootstrap: str, topic: str) -> None:
    """A record with a key and no value (Kafka's delete marker)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(topic, key=b"web", value=None).get(timeout=30)
    producer.close()


def job_config(bootstrap: str, tmp_path) -> dict:
    db = f"jdbc:sqlite:{tmp_path}/results.db"
    return {
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "trigger": "available_now",
        "streams": [
            {
                "name": "windowed",
                "source": {"bootstrap_servers": bootstrap, "topics": ["e2e-web", "e2e-db"]},
                "aggregation": {
                    "agg_function": "avg",
                    "agg_window_millis": WINDOW_MS,
                    "allowed_lateness_millis": LATENESS_MS,
                },
                "detectors": [{"name": "ema", "params": EMA}, {"name": "robust", "params": ROBUST}],
                "sinks": {"output_topic": "e2e-out", "dead_letter_topic": "e2e-dlq", "jdbc": {"url": db}},
            },
            {
                "name": "points",
                "source": {"bootstrap_servers": bootstrap, "topic_pattern": "e2e-w.*"},
                "aggregation": {"agg_function": "none"},
                "detectors": [{"name": "ema", "params": EMA}],
                "sinks": {
                    "output_topic": "e2e-out-points",
                    "dead_letter_topic": "e2e-dlq-points",
                    "jdbc": {"url": db},
                },
            },
        ],
    }


def iso_ms(ts: str) -> int:
    return int(np.datetime64(ts.rstrip("Z"), "ms").astype(np.int64))


def expected_windows(messages: list[dict], watermark_ms: int) -> dict[str, list[tuple[int, float]]]:
    by_window: dict[tuple[str, int], list[float]] = defaultdict(list)
    for m in messages:
        ts = iso_ms(m["ts"])
        by_window[(m["application"], ts - ts % WINDOW_MS)].append(m["value"])
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (app, start), values in sorted(by_window.items()):
        if start + WINDOW_MS <= watermark_ms:
            out[app].append((start, float(np.sum(values) / len(values))))
    return out


@pytest.mark.timeout(900)
def test_kafka_to_kafka_and_sqlite_with_restart(kafka_broker, spark, tmp_path):
    bootstrap = kafka_broker.bootstrap_servers
    for topic in ("e2e-web", "e2e-db", "e2e-out", "e2e-dlq", "e2e-out-points", "e2e-dlq-points"):
        kafka_broker.create_topic(topic, partitions=2)
    config = parse_config(job_config(bootstrap, tmp_path))

    # -- run 1: 30 minutes of data and the bad messages -------------------------------
    web1, db1 = series("web", 0, 1800), series("db", 0, 1800)
    # two values at one instant in one batch (second-resolution timestamps, two hosts under one name):
    # the window counts both; the points stream keeps the first and dead-letters the other
    same_instant = [msg("web", 1.5, 905), msg("web", 0.0, 905)]
    produce_messages(bootstrap, "e2e-web", web1 + same_instant)
    produce_messages(bootstrap, "e2e-db", db1)
    produce_messages(bootstrap, "e2e-web", list(BAD))
    tombstone(bootstrap, "e2e-web")
    assert run(config, spark=spark) == 0

    # -- run 2, from the checkpoint: 10 more minutes and one late event ------------------
    web2, db2 = series("web", 1800, 2400), series("db", 1800, 2400)
    late = msg("web", 999.0, 65)  # its window [60s,120s) was scored in run 1
    # producer retries: a copy of run 1's last event (its window is still open: the copy must be
    # recognised from the state restored from the checkpoint) and a copy within this run
    duplicates = [web1[-1], web2[3]]
    # another value at the instant of run 1's last point (still open after the restart)
    conflicting = {**web1[-1], "value": web1[-1]["value"] + 7.0}
    produce_messages(bootstrap, "e2e-web", [*web2, late, *duplicates, conflicting])
    produce_messages(bootstrap, "e2e-db", db2)
    assert run(config, spark=spark) == 0

    # -- expected, computed without Spark ------------------------------------------------
    watermark = T0_MS + 2390 * 1000 - LATENESS_MS
    windows = expected_windows(web1 + same_instant + web2 + [conflicting] + db1 + db2, watermark)
    expected = {}
    for app, points in windows.items():
        for label, params in (("ema", EMA), ("robust", ROBUST)):
            det = build_detector(label, params)
            for start, value in points:
                r = det.update(start, value)
                expected[(app, label, start)] = (
                    value,
                    r.value_lower_limit,
                    r.value_upper_limit,
                    r.anomaly_probability,
                    r.is_anomaly,
                )

    # -- SQLite ----------------------------------------------------------------------------
    con = sqlite3.connect(tmp_path / "results.db")
    rows = con.execute(
        "SELECT application, detector, ts, agg_value, value_lower_limit, value_upper_limit, "
        "anomaly_probability, is_anomaly FROM predictions WHERE agg_function = 'avg'"
    ).fetchall()
    got = {}
    for app, det, ts, value, lo, hi, prob, flag in rows:
        start = iso_ms(ts)
        got[(app, det, start)] = (value, lo, hi, prob, bool(flag))
    assert set(got) == set(expected)
    for key, (value, lo, hi, prob, flag) in expected.items():
        g = got[key]
        assert g[0] == pytest.approx(value, rel=1e-12), key
        assert (g[1], g[2], g[4]) == (lo, hi, flag), key
        assert g[3] == pytest.approx(prob, abs=1e-15), key
    flagged = {(a, d, s - T0_MS) for (a, d, s), v in got.items() if v[4]}
    assert ("web", "ema", 1_200_000) in flagged and ("web", "robust", 1_200_000) in flagged
    points = con.execute(
        "SELECT COUNT(*), COUNT(DISTINCT application) FROM predictions WHERE agg_function='none'"
    ).fetchone()
    # every web point up to the final watermark of the points stream (no lateness configured), one per instant
    assert points == (len([m for m in web1 + web2 if m["ts"] < "2024-01-01T00:39:50.000Z"]) + 1, 1)
    kept = con.execute(
        "SELECT ts, agg_value FROM predictions WHERE agg_function='none' AND detector='ema' AND ts IN (?, ?)",
        (same_instant[0]["ts"], web1[-1]["ts"]),
    ).fetchall()
    assert sorted(kept) == sorted([(same_instant[0]["ts"], 1.5), (web1[-1]["ts"], web1[-1]["value"])])

    # -- Kafka output: the same results, keyed deterministically ------------------------
    out = consume_all(bootstrap, "e2e-out")
    messages = [json.loads(r.value) for r in out]
    assert {(m["application"], m["detector"], m["ts"]) for m in messages} == {
        (a, d, str(np.datetime64(s, "ms")) + "Z") for (a, d, s) in expected
    }
    for record, message in zip(out, messages, strict=True):  # the key names the row it upserts
        key = json.loads(record.key)
        assert key == {k: message[k] for k in ("application", "detector", "agg_function", "agg_window_millis", "ts")}
    sample = next(
        m
        for m in messages
        if m["application"] == "web" and m["detector"] == "ema" and m["ts"].endswith("00:20:00.000Z")
    )
    assert set(sample["anomaly_results"]) == {
        "value_lower_limit",
        "value_upper_limit",
        "anomaly_probability",
        "is_anomaly",
        "explanation",
    }
    assert sample["anomaly_results"]["is_anomaly"] is True and sample["agg_window_millis"] == WINDOW_MS

    # -- dead letters: every bad message once, with its reason and original bytes ----------
    dlq = consume_all(bootstrap, "e2e-dlq")
    reasons = {r.value: r.header("anomaly.reason").decode() for r in dlq}
    assert {k: v for k, v in reasons.items() if k in BAD} == BAD
    late_bytes = json.dumps(late, separators=(",", ":")).encode()
    assert reasons[late_bytes] == "late"
    assert reasons[None] == "null_value"  # the tombstone
    for copy in duplicates:
        assert reasons[json.dumps(copy, separators=(",", ":")).encode()] == "duplicate"
    assert len(dlq) == len(BAD) + 2 + len(duplicates)
    source = json.loads(next(r for r in dlq if r.value == late_bytes).header("anomaly.source"))
    assert source["topic"] == "e2e-web" and source["offset"] >= 0
    # the points stream reads e2e-web only (by pattern): it sees the bad web messages too
    dlq_points = consume_all(bootstrap, "e2e-dlq-points")
    assert {r.value for r in dlq_points if r.value in BAD} == set(BAD)
    duplicate_points = [r for r in dlq_points if r.header("anomaly.reason") == b"duplicate"]
    assert sorted(json.loads(r.value)["ts"] for r in duplicate_points) == sorted(m["ts"] for m in duplicates)
    conflicts = [r for r in dlq_points if r.header("anomaly.reason") == b"conflicting_value"]
    assert sorted((json.loads(r.value)["ts"], json.loads(r.value)["value"]) for r in conflicts) == sorted(
        (m["ts"], m["value"]) for m in (same_instant[1], conflicting)
    )
    assert any(repr(web1[-1]["value"]) in r.header("anomaly.detail").decode() for r in conflicts)
    # one key, one value: at-least-once may repeat a message, never with another value
    values_by_key = defaultdict(set)
    for record in consume_all(bootstrap, "e2e-out-points") + out:
        values_by_key[record.key].add(record.value)
    assert values_by_key and all(len(v) == 1 for v in values_by_key.values())
