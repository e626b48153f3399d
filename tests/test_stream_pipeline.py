"""The scoring pipeline through Spark (file stream in, memory sink out): windows, late data, state."""

from __future__ import annotations

import numpy as np
from chispa import assert_df_equality

import tests.failing_detector  # noqa: F401 - registers "fail_on_value" in the driver
from detectors import build_detector
from tests.stream_harness import T0_MS, FileStream, msg, stream_config

W = 10_000
# a: window [0,10s) = 1, 2, 4 (9.999 s is inside), [10s,20s) = 8, 16 (10 s opens it)
# b: one value per window
BATCH = [
    msg("a", 1, 0),
    msg("a", 2, 3),
    msg("a", 4, 9.999),
    msg("a", 8, 10),
    msg("a", 16, 19.999),
    msg("b", 5, 1),
    msg("b", 7, 12),
]
EXPECTED = {  # one partial function (merged from per-window partials) and one on the raw values
    "avg": {"a": [7 / 3, 12.0], "b": [5.0, 7.0]},
    "percentile95": {"a": [3.8, 15.6], "b": [5.0, 7.0]},
}


def test_a_partial_and_a_raw_aggregation_function_through_spark(spark, tmp_path):
    """Through Spark for one function of each kind; every function's maths is checked bit for bit without
    Spark (tests/test_windows.py, tests/test_step_vectorised.py against the oracles)."""
    functions = sorted(EXPECTED)
    # a few queries side by side: query start-up, not work, dominates on 2 cores
    streams = {f: FileStream(spark, tmp_path / f, stream_config(f, W)) for f in functions}
    try:
        for stream in streams.values():
            stream.send(*BATCH, wait=False)
        for stream in streams.values():
            stream.wait()
        for stream in streams.values():  # a later event moves the watermark past both windows
            stream.send(msg("c", 0, 60), wait=False)
        for stream in streams.values():
            stream.wait()
        for function, stream in streams.items():
            got = stream.frame().select("application", "ts_ms", "agg_function", "agg_window_millis", "agg_value")
            expected = spark.createDataFrame(
                [
                    (app, T0_MS + i * W, function, W, float(v))
                    for app, values in sorted(EXPECTED[function].items())
                    for i, v in enumerate(values)
                ],
                "application string, ts_ms long, agg_function string, agg_window_millis long, agg_value double",
            )
            assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)
    finally:
        for stream in streams.values():
            stream.stop()


def test_late_events_go_to_dead_letters_and_nothing_else_changes(spark, tmp_path):
    stream = FileStream(spark, tmp_path, stream_config("sum", W, allowed_lateness_millis=5_000))
    try:
        stream.send(msg("a", 1, 0), msg("a", 2, 14))  # watermark -> 9 s: nothing closes yet
        stream.send(msg("a", 4, 9.5))  # still on time: [0,10s) is open until the watermark reaches 10 s
        stream.send(msg("a", 8, 30))  # watermark -> 25 s: closes [0,10s) and [10s,20s)
        stream.send(msg("a", 100, 9), msg("a", 200, 19.999), msg("a", 16, 20))  # two late, one on time
        stream.send(msg("b", 0, 200))  # another key moves the watermark; a's timer closes its windows
        results = [(r["ts_ms"] - T0_MS, r["agg_value"]) for r in stream.rows()]
        assert results == [(0, 5.0), (10_000, 2.0), (20_000, 16.0), (30_000, 8.0)]
        late = stream.rows("dead_letter")
        assert [(r["reason"], r["ts_ms"] - T0_MS, r["agg_value"]) for r in late] == [
            ("late", 9_000, 100.0),
            ("late", 19_999, 200.0),
        ]
        assert all(r["application"] == "a" and r["raw"] and r["src_topic"] == "t" for r in late)
    finally:
        stream.stop()


def test_detectors_in_spark_state_match_the_library(spark, tmp_path):
    detectors = [
        {"name": "ema", "params": {"window": 4, "warmup": 3}},
        {"name": "robust", "params": {"window": 5, "warmup": 3}},
    ]
    stream = FileStream(spark, tmp_path, stream_config("none", 0, detectors=detectors))
    rng = np.random.default_rng(7)
    values = {app: rng.normal(10, 2, 24).round(3) for app in ("a", "b")}
    values["a"][17] = 60.0  # a spike
    try:
        for start in range(0, 24, 6):  # four micro-batches: state crosses batch boundaries
            stream.send(*[msg(app, float(v[i]), i) for app, v in values.items() for i in range(start, start + 6)])
        stream.send(msg("zz", 0, 1_000))
        rows = stream.rows()
        for app in ("a", "b"):
            for spec in detectors:
                det = build_detector(spec["name"], spec["params"])
                expected = [det.update(T0_MS + i * 1000, float(v)) for i, v in enumerate(values[app])]
                got = [r for r in rows if r["application"] == app and r["detector"] == spec["name"]]
                assert [r["ts_ms"] - T0_MS for r in got] == [i * 1000 for i in range(24)]
                for r, e in zip(got, expected, strict=True):
                    assert r["anomaly_probability"] == e.anomaly_probability
                    assert r["is_anomaly"] == e.is_anomaly
                    assert r["value_lower_limit"] == e.value_lower_limit
                    assert r["value_upper_limit"] == e.value_upper_limit
        flagged = {(r["application"], r["detector"], r["ts_ms"] - T0_MS) for r in rows if r["is_anomaly"]}
        assert ("a", "ema", 17_000) in flagged and ("a", "robust", 17_000) in flagged
    finally:
        stream.stop()


def test_a_failing_detector_only_affects_its_own_key(spark, tmp_path):
    stream = FileStream(spark, tmp_path, stream_config("none", 0, detectors=["fail_on_value"]))
    try:
        stream.send(msg("a", 1, 0), msg("a", 13, 1), msg("b", 2, 0), msg("b", 3, 1))
        stream.send(msg("a", 4, 2), msg("b", 5, 2), "not json")
        stream.send(msg("a", 0, 100))
        results = {(r["application"], r["ts_ms"] - T0_MS) for r in stream.rows()}
        assert {("b", 0), ("b", 1000), ("b", 2000), ("a", 2000)} <= results
        dead = stream.rows("dead_letter")
        errors = [r for r in dead if r["reason"] == "detector_error"]
        assert {(r["application"], r["ts_ms"] - T0_MS) for r in errors} == {("a", 1000)}
        assert ("a", 0) in results
        assert "cannot score 13.0" in errors[0]["detail"]
        assert [r["reason"] for r in dead if r["reason"] != "detector_error"] == ["invalid_json"]
    finally:
        stream.stop()


def test_the_job_gives_the_same_rows_with_one_bucket_for_all_and_about_one_per_application(spark, tmp_path):
    """Bucketing is an implementation detail: 1 bucket vs 4,096 (almost every application alone)."""
    rng = np.random.default_rng(11)
    batches = []
    for b in range(4):
        batch = []
        for _ in range(60):
            app = f"app-{int(rng.integers(0, 25))}"
            seconds = b * 20 + float(rng.integers(-8_000, 20_000)) / 1000  # some late
            batch.append(msg(app, float(np.round(rng.normal(50, 5), 2)), max(seconds, 0)))
        batch.append(dict(batch[-1]))  # an exact repeat
        batch.append({**batch[-1], "value": batch[-1]["value"] + 1})  # a second value at one instant
        batches.append(batch)
    for function, window in (("avg", W), ("none", 0)):
        streams = {
            buckets: FileStream(
                spark, tmp_path / f"{function}-{buckets}", stream_config(function, window, 2_000, buckets=buckets)
            )
            for buckets in (1, 4096)
        }
        try:
            for batch in [*batches, [msg("zz", 0, 500)]]:
                for stream in streams.values():
                    stream.send(*batch, wait=False)
                for stream in streams.values():
                    stream.wait()
            one, many = (spark.sql(f"select * from {streams[b].name}").drop("src_offset") for b in (1, 4096))
            assert one.filter("kind = 'result'").count() > 40
            assert one.filter("kind = 'dead_letter'").count() >= 2
            assert_df_equality(one, many, ignore_row_order=True, ignore_nullable=True)
        finally:
            for stream in streams.values():
                stream.stop()
