"""The seeded demo stream: determinism, ordering, and injected anomalies a detector can find."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from tools.synthetic import (
    DEFAULT_APPLICATIONS,
    DIP,
    LEVEL_SHIFT,
    SPIKE,
    encode_message,
    generate,
    iso_z,
    parse_iso_z,
)

WINDOW_S = 300


@pytest.fixture(scope="module")
def stream():
    return generate()


def test_same_seed_same_stream_other_seed_other_stream(stream):
    assert generate() == stream
    other = generate(seed=43)
    assert other.messages != stream.messages
    assert [m["ts"] for m in other.messages] == [m["ts"] for m in stream.messages]


def test_message_shape_and_time_order(stream):
    n_apps = len(DEFAULT_APPLICATIONS)
    assert len(stream.messages) == 1440 * n_apps
    for m in stream.messages[:50]:
        assert set(m) == {"application", "value", "ts"}
        assert isinstance(m["value"], float) and m["value"] >= 0
        assert m["ts"].endswith("Z")
        json.loads(encode_message(m))
    times = [parse_iso_z(m["ts"]) for m in stream.messages]
    assert times == sorted(times)
    assert times[0] == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert times[-1] - times[0] == timedelta(minutes=1439)
    per_app = defaultdict(list)
    for m, t in zip(stream.messages, times, strict=True):
        per_app[m["application"]].append(t)
    assert set(per_app) == set(DEFAULT_APPLICATIONS)
    for ts in per_app.values():
        assert all(b - a == timedelta(seconds=60) for a, b in itertools.pairwise(ts))


def test_parameters_are_honoured():
    s = generate(start="2025-03-01T12:00:00Z", points_per_app=500, step_s=30, seed=5, applications=["a", "b"])
    assert len(s.messages) == 1000
    assert s.messages[0]["ts"] == "2025-03-01T12:00:00Z"
    last = datetime(2025, 3, 1, 12, tzinfo=timezone.utc) + timedelta(seconds=499 * 30)
    assert s.messages[-1]["ts"] == iso_z(last)
    assert {a.application for a in s.anomalies} <= {"a", "b"}
    assert generate(points_per_app=500, inject=False).anomalies == []


def test_injected_anomalies_present_and_well_separated(stream):
    anomalies = stream.anomalies
    assert {a.kind for a in anomalies} == {SPIKE, DIP, LEVEL_SHIFT}
    assert sum(a.kind == LEVEL_SHIFT for a in anomalies) == 1
    assert {a.application for a in anomalies} == set(DEFAULT_APPLICATIONS)
    start = parse_iso_z(stream.messages[0]["ts"])
    end = parse_iso_z(stream.messages[-1]["ts"])
    by_app = defaultdict(list)
    for a in anomalies:
        t = parse_iso_z(a.ts)
        assert t - start >= timedelta(hours=2), "no anomaly during the warm-up"
        assert end - t >= timedelta(hours=1), "history after each anomaly"
        assert t.timestamp() % WINDOW_S == 0, "anomalies start on 5-minute window boundaries"
        if a.kind == LEVEL_SHIFT:
            assert a.end_ts is None and a.delta > 0
        else:
            assert parse_iso_z(a.end_ts) - t == timedelta(minutes=10)
            assert (a.delta > 0) == (a.kind == SPIKE)
        by_app[a.application].append(t)
    for times in by_app.values():
        assert all(b - a >= timedelta(hours=1) for a, b in itertools.pairwise(times))
    # Each application's level shift, if any, is its last anomaly.
    for app in by_app:
        kinds = [a.kind for a in anomalies if a.application == app]
        assert LEVEL_SHIFT not in kinds[:-1]


def _window_means(messages):
    windows = defaultdict(list)
    for m in messages:
        windows[(m["application"], int(parse_iso_z(m["ts"]).timestamp()) // WINDOW_S)].append(m["value"])
    return {k: float(np.mean(v)) for k, v in windows.items()}


@pytest.mark.parametrize("seed", [42, 7])
def test_anomalies_stand_out_after_5_minute_averaging(seed):
    """A plain EMA mean/variance z-score on 5-minute averages finds every injected anomaly at its
    first window and flags nothing that is not inside an anomaly."""
    s = generate(seed=seed)
    means = _window_means(s.messages)
    expected = {(a.application, int(parse_iso_z(a.ts).timestamp()) // WINDOW_S) for a in s.anomalies}
    affected = set()
    for a in s.anomalies:
        first = int(parse_iso_z(a.ts).timestamp()) // WINDOW_S
        last = int(parse_iso_z(a.end_ts).timestamp()) // WINDOW_S if a.end_ts else 10**12
        affected |= {(app, w) for (app, w) in means if app == a.application and first <= w < last}

    flagged = set()
    for app in {k[0] for k in means}:
        mean = var = None
        for n, w in enumerate(sorted(w for (a, w) in means if a == app)):
            x = means[(app, w)]
            if mean is None:
                mean, var = x, (0.05 * x) ** 2
                continue
            z = (x - mean) / np.sqrt(var)
            if n >= 12 and abs(z) > 6:
                flagged.add((app, w))
                mean += 0.02 * (x - mean)  # adapt slowly through anomalies
            else:
                d = x - mean
                mean += 0.1 * d
                var = 0.9 * (var + 0.1 * d * d)
    assert expected <= flagged
    assert flagged <= affected
