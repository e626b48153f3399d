"""The backtest command and the streaming job give the same results for the same input."""

from __future__ import annotations

import csv
import math

import numpy as np

from tests.stream_harness import T0_MS, FileStream, msg, stream_config
from tools.backtest import main as backtest_main

DETECTORS = ["ema", "robust", "cad", "default"]
POINTS = 600  # enough to pass every detector's warm-up (default: 150 points)


def series() -> list[tuple[int, float]]:
    rng = np.random.default_rng(11)
    t = np.arange(POINTS)
    values = 50 + 10 * np.sin(2 * np.pi * t / 96) + rng.normal(0, 1, POINTS)
    values[400:404] += 40  # a spike
    values[500:] += 15  # a level shift
    return [(int(i) * 60, round(float(v), 4)) for i, v in zip(t, values, strict=True)]


def test_backtest_and_streaming_job_agree(spark, tmp_path):
    points = series()
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "app.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "value"])
        for seconds, value in points:
            writer.writerow([msg("x", value, seconds)["ts"].replace("T", " ").rstrip("Z"), repr(value)])
    backtest = {}
    for name in DETECTORS:
        out = tmp_path / f"out-{name}"
        assert backtest_main(["--data", str(data), "--out", str(out), "--detector", name, "--quiet"]) == 0
        with open(out / "app.csv", newline="") as fh:
            backtest[name] = list(csv.DictReader(fh))

    stream = FileStream(spark, tmp_path, stream_config("none", 0, detectors=DETECTORS))
    try:
        for start in range(0, POINTS, 150):  # four micro-batches: state crosses batch boundaries
            stream.send(*[msg("app", v, s) for s, v in points[start : start + 150]])
        stream.send(msg("flush", 0.0, POINTS * 60 + 600))  # moves the watermark past every point
        rows = stream.rows()
    finally:
        stream.stop()

    for name in DETECTORS:
        got = [r for r in rows if r["application"] == "app" and r["detector"] == name]
        assert [r["ts_ms"] - T0_MS for r in got] == [s * 1000 for s, _ in points]
        for r, b in zip(got, backtest[name], strict=True):
            assert r["anomaly_probability"] == float(b["anomaly_score"]), name
            assert int(r["is_anomaly"]) == int(b["is_anomaly"]), name
            for column in ("value_lower_limit", "value_upper_limit"):
                expected = float(b[column]) if b[column] else math.nan
                value = math.nan if r[column] is None else r[column]
                assert value == expected or (math.isnan(value) and math.isnan(expected)), (name, column)
    # the comparison is not vacuous: results vary and the spike is flagged
    assert any(int(b["is_anomaly"]) for b in backtest["ema"][398:410])
    assert len({b["anomaly_score"] for b in backtest["default"]}) > 10
