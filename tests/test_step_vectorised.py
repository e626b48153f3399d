"""The vectorised per-bucket step equals the application-by-application step, bit for bit.

The oracle is tests/oracles/stateful_step_oracle.py.
Random batches -- late events, exact repeats, same-instant conflicts, -0.0,
idle applications, empty (timer) batches, a detector failing on some points --
go through both, bucket by bucket, with every bucket's state encoded and
decoded between batches as Spark stores it. Every output column is compared
in order, and after every step each application's state (open windows, seen
events, closed_until, last event, due time, detector state blobs).
"""

from __future__ import annotations

import numpy as np
import pytest

import tests.failing_detector  # noqa: F401 - registers "fail_on_value"
from detectors import get_detector_class
from detectors.base import _update_many_loop
from detectors.state import StateError
from jobs import aggregations, main
from jobs import stateful_step as new
from jobs.result_format import OPERATOR_COLUMNS
from tests.oracles import stateful_step_oracle as old
from tests.oracles import windows_oracle

FUNCTIONS = aggregations.NAMES


def _detectors(failing: bool, fail_value: float = 13.0) -> tuple:
    chosen = [
        ("ema", get_detector_class("ema"), {"window": 4, "warmup": 2}),
        ("robust", get_detector_class("robust"), {"window": 5, "warmup": 3}),
    ]
    if failing:
        chosen.insert(1, ("boom", get_detector_class("fail_on_value"), {"fail_value": fail_value}))
    return tuple(chosen)


def _batches(rng: np.random.Generator, apps: int, batches: int) -> list[tuple[dict, int]]:
    out, t, offset = [], 0, 0
    for b in range(batches):
        if b % 5 == 4:  # a timer: no events, the watermark moves on
            t += 20_000
            out.append((None, t - 5_000))
            continue
        rows = []
        for _ in range(int(rng.integers(0, 120))):
            app = f"a{int(rng.integers(0, apps))}"
            ts = max(t + int(rng.integers(-25_000, 30_000)), 0)
            value = float(rng.choice([13.0, -0.0, 0.0, np.round(rng.normal(100, 10), 1)], p=[0.03, 0.04, 0.04, 0.89]))
            rows.append((app, ts, value))
            if rng.random() < 0.08:
                rows.append(rows[-1])  # an exact repeat
            if rng.random() < 0.06:
                rows.append((app, ts, value + 1.0))  # the same instant, another value
        rng.shuffle(rows)  # shuffle order: the step sorts
        n = len(rows)
        events = {
            "application": np.array([r[0] for r in rows], dtype=object),
            "ts_ms": np.array([r[1] for r in rows], dtype=np.int64),
            "value": np.array([r[2] for r in rows], dtype=np.float64),
            "src_topic": rng.choice(np.array(["t1", "t2"], dtype=object), n),
            "src_partition": rng.integers(0, 3, n).astype(np.int32),
            "src_offset": np.arange(offset, offset + n, dtype=np.int64),
        }
        offset += n
        t += int(rng.integers(5_000, 40_000))
        out.append((events, t - int(rng.integers(0, 10_000))))
    return out


def _same_column(name: str, a: np.ndarray, b: np.ndarray) -> None:
    assert len(a) == len(b), name
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
        if isinstance(x, float) and isinstance(y, float):
            assert np.float64(x).tobytes() == np.float64(y).tobytes() or (x != x and y != y), (name, i, x, y)
        else:
            assert x == y and type(x) is type(y), (name, i, x, y)


def _application_view(state: new.BucketState, name: str) -> old.KeyState:
    """One application's columns of a vectorised bucket state, in the oracle's per-application form."""
    i = state.index[name]
    key = old.KeyState(state.agg_function)
    empty_i, empty_f = np.zeros(0, dtype=np.int64), np.zeros(0)
    w = {k: v[state.windows["app"] == i] for k, v in state.windows.items()} if state.windows else {}
    closed_until = int(state.closed_until[i])
    if state.agg_function in windows_oracle.RAW_VALUE_FUNCTIONS:
        key.windows = windows_oracle.WindowState(
            closed_until, w["start"], w["ts"], empty_i, w["value"], empty_f, empty_f
        )
    elif w:
        seen = {k: v[state.seen["app"] == i] for k, v in state.seen.items()}
        key.windows = windows_oracle.WindowState(
            closed_until, w["start"], empty_i, w["count"], w["sum"], w["min"], w["max"], seen["ts"], seen["value"]
        )
    else:
        key.windows = windows_oracle.WindowState.empty(state.agg_function, closed_until)
    key.last_event_ms = int(state.last_event[i])
    key.detector_blobs = {label: blobs[i] for label, blobs in state.detectors.items() if blobs[i]}
    return key


def _same_state(old_state: old.BucketState, new_state: new.BucketState) -> None:
    assert new_state.names == old_state.names
    assert new_state.due.tolist() == old_state.due.tolist()
    for i, name in enumerate(old_state.names):
        want = old.KeyState.decode(old_state.blobs[i])
        got = _application_view(new_state, name)
        assert got.last_event_ms == want.last_event_ms, name
        assert got.detector_blobs == want.detector_blobs, name
        for field in ("closed_until", "starts", "ts", "counts", "sums", "mins", "maxs", "seen_ts", "seen_values"):
            x, y = np.asarray(getattr(got.windows, field)), np.asarray(getattr(want.windows, field))
            assert x.tobytes() == y.tobytes(), (name, field, x, y)


@pytest.mark.parametrize("agg_function", FUNCTIONS)
@pytest.mark.parametrize("seed", [1, 2])
def test_the_vectorised_step_gives_what_the_per_application_step_gave(agg_function, seed):
    rng = np.random.default_rng(seed * 100 + FUNCTIONS.index(agg_function))
    window = 0 if agg_function == "none" else 10_000
    detectors = _detectors(seed == 2, 2.0 if agg_function == "count" else 13.0)
    args = (agg_function, window, detectors, 60_000, seed == 1 or agg_function == "none")
    settings_old, settings_new = old.StepSettings(*args), new.StepSettings(*args)
    buckets = 3
    stored_old: dict[int, bytes] = {}
    stored_new: dict[int, bytes] = {}
    kinds: set[str] = set()
    reasons: set[str] = set()
    for events, watermark in _batches(rng, apps=25, batches=14):
        if events is None:
            per_bucket = {b: None for b in stored_old}
        else:
            bucket_of = np.array([int(a[1:]) % buckets for a in events["application"]], dtype=np.int64)
            per_bucket = {
                b: {k: v[bucket_of == b] for k, v in events.items()} for b in range(buckets) if (bucket_of == b).any()
            }
            per_bucket.update({b: None for b in stored_old if b not in per_bucket})
        for bucket, bucket_events in sorted(per_bucket.items()):
            state_old = old.BucketState.decode(stored_old[bucket]) if bucket in stored_old else old.BucketState.empty()
            state_new = new.BucketState.decode(stored_new[bucket]) if bucket in stored_new else new.BucketState.empty()
            out_old = old.step_bucket(state_old, bucket_events or old.empty_events(), watermark, settings_old)
            out_new = new.step_bucket(state_new, bucket_events or new.empty_events(), watermark, settings_new)
            columns_old = out_old.columns(agg_function, window)
            columns_new = out_new.columns(agg_function, window)
            for column in OPERATOR_COLUMNS:
                _same_column(column, columns_new[column], columns_old[column])
            assert out_new.count_results() == out_old.count_results()
            kinds.update(columns_old["kind"].tolist())
            reasons.update(r for r in columns_old["reason"].tolist() if r)
            _same_state(state_old, state_new)
            assert len(state_new) == len(state_old)
            for stored, state in ((stored_old, state_old), (stored_new, state_new)):
                if len(state):
                    stored[bucket] = state.encode()
                else:
                    stored.pop(bucket, None)
    # the input exercised what it is meant to
    assert kinds == {"result", "dead_letter"}
    assert "late" in reasons
    if seed == 2 and agg_function in ("none", "min", "max", "count"):
        assert "detector_error" in reasons
    if agg_function == "none":
        assert {"duplicate", "conflicting_value"} <= reasons


@pytest.mark.parametrize(
    "name,params",
    [
        ("ema", {"window": 6, "warmup": 3}),
        ("robust", {"window": 7, "warmup": 4}),
        ("robust", {"window": 3, "warmup": 5, "threshold": 0.99}),
        ("fail_on_value", {}),  # a detector without its own update_many: the default loop
    ],
)
def test_update_many_equals_update_batch_per_series_bit_for_bit(name, params, monkeypatch):
    cls = get_detector_class(name)
    rng = np.random.default_rng(3)
    # series at every stage: fresh, warming up, filling the window, full; some points far out
    series = []
    for k in range(40):
        history = rng.normal(50, 5, int(rng.integers(0, 20)))
        if history.size:
            detector = cls(**params)
            detector.update_batch(np.arange(len(history)), history)
            blob = detector.to_state()
        else:
            blob = None
        points = rng.normal(50, 5, int(rng.integers(1, 12)))
        points[rng.random(len(points)) < 0.1] *= 1e3
        if k % 7 == 0:  # near the float limit: the detectors' scaled paths
            points[: len(points) // 2 + 1] = rng.choice([-1.0, 1.0]) * rng.uniform(1e307, 1.7e308)
        series.append((blob, points))
    offsets = np.cumsum([0] + [len(p) for _, p in series])
    values = np.concatenate([p for _, p in series])
    ts = np.arange(len(values), dtype=np.int64)
    if name != "fail_on_value":  # the vectorised path: no per-series from_state
        message = (
            f"{name}.update_many took the per-series path: its vectorised path does not know this detector's "
            "state fields (adapt it after a change of the detector's state or recursion)"
        )
        monkeypatch.setattr(cls, "from_state", classmethod(lambda *a, **k: pytest.fail(message)))
    blobs, result = cls.update_many([b for b, _ in series], ts, values, offsets, **params)
    fresh_blobs, fresh = cls.update_many([None] * len(series), ts, values, offsets, **params)
    monkeypatch.undo()
    for k, (blob, points) in enumerate(series):
        detector = cls(**params) if blob is None else cls.from_state(blob, **params)
        want = detector.update_batch(ts[offsets[k] : offsets[k + 1]], points)
        assert blobs[k] == detector.to_state()
        for field in ("value_lower_limit", "value_upper_limit", "anomaly_probability", "is_anomaly"):
            got = getattr(result, field)[offsets[k] : offsets[k + 1]]
            assert np.asarray(got).tobytes() == np.asarray(getattr(want, field)).tobytes(), (k, field)
        assert list(result.explanation[offsets[k] : offsets[k + 1]]) == list(want.explanation)
    # only fresh series (a bucket's first windows)
    loop_blobs, loop = _update_many_loop(cls, [None] * len(series), ts, values, offsets, params)
    assert fresh_blobs == loop_blobs
    assert fresh.anomaly_probability.tobytes() == loop.anomaly_probability.tobytes()
    # a series that fails makes the whole call fail, so that the job isolates it point by point
    bad = values.copy()
    bad[offsets[3]] = np.inf
    with pytest.raises(ValueError):
        cls.update_many([b for b, _ in series], ts, bad, offsets, **params)


def test_a_bucket_state_of_the_previous_layout_is_refused_with_a_clear_message():
    state = old.BucketState.empty()
    settings = old.StepSettings("avg", 10_000, _detectors(False), 60_000, True)
    old.step_bucket(
        state,
        old.empty_events()
        | {
            "application": np.array(["a"], dtype=object),
            "ts_ms": np.array([5]),
            "value": np.array([1.0]),
            "src_topic": np.array(["t"], dtype=object),
            "src_partition": np.array([0]),
            "src_offset": np.array([0]),
        },
        0,
        settings,
    )
    with pytest.raises(StateError, match="new checkpoint"):
        new.BucketState.decode(state.encode())
    assert main.STATE_LAYOUT == "buckets-2"


def test_a_checkpoint_of_the_previous_bucket_layout_is_refused_before_spark_starts(tmp_path):
    import copy
    import json

    from tests.test_config import BASE, parse_config

    raw = copy.deepcopy(BASE)
    raw["checkpoint_dir"] = str(tmp_path)
    job = parse_config(raw)
    stream = job.streams[0]
    main.check_checkpoint(stream, main.checkpoint_of(job, stream))
    fingerprint = tmp_path / stream.name / main.FINGERPRINT_FILE
    written = json.loads(fingerprint.read_text())
    written["state_layout"] = "buckets-1"
    fingerprint.write_text(json.dumps(written))
    with pytest.raises(main.CheckpointMismatch, match=r"one blob per application.*'buckets-2'.*new checkpoint"):
        main.check_checkpoint(stream, main.checkpoint_of(job, stream))
