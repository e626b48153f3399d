"""The per-bucket step (jobs/stateful_step.py), without Spark: buckets change nothing per application."""

from __future__ import annotations

import numpy as np
import pytest

import tests.failing_detector  # noqa: F401 - registers "fail_on_value"
from detectors import get_detector_class
from jobs.result_format import OPERATOR_COLUMNS
from jobs.stateful_step import (
    BucketState,
    StepSettings,
    empty_events,
    final_watermark,
    step_bucket,
)

DAY = 86_400_000


def settings(agg_function: str = "avg", window_ms: int = 10_000, **kw) -> StepSettings:
    detectors = kw.pop(
        "detectors",
        (
            ("ema", get_detector_class("ema"), {"window": 5, "warmup": 2}),
            ("robust", get_detector_class("robust"), {"window": 8, "warmup": 3}),
        ),
    )
    return StepSettings(agg_function, window_ms, detectors, kw.pop("idle_timeout_ms", DAY), kw.pop("deduplicate", True))


def events(rows: list[tuple[str, int, float]], offset0: int = 0) -> dict[str, np.ndarray]:
    n = len(rows)
    return {
        "application": np.array([r[0] for r in rows], dtype=object),
        "ts_ms": np.array([r[1] for r in rows], dtype=np.int64),
        "value": np.array([r[2] for r in rows], dtype=np.float64),
        "src_topic": np.full(n, "t", dtype=object),
        "src_partition": np.zeros(n, dtype=np.int32),
        "src_offset": np.arange(offset0, offset0 + n, dtype=np.int64),
    }


def run_batches(batches, bucket_of, step_settings, eager_lateness_ms: int | None = None) -> list[tuple]:
    """Feed batches of (rows, watermark) through buckets, round-tripping state as Spark does.

    ``eager_lateness_ms``: also close what each bucket's events made final, as the operator does
    (jobs/stateful_operator.py, :func:`final_watermark`)."""
    blobs: dict[int, bytes] = {}
    out_rows: list[tuple] = []
    offset = 0
    for rows, watermark in batches:
        by_bucket: dict[int, list] = {}
        for row in rows:
            by_bucket.setdefault(bucket_of(row[0]), []).append(row)
        for bucket in sorted(set(by_bucket) | set(blobs)):
            state = BucketState.decode(blobs[bucket]) if bucket in blobs else BucketState.empty()
            batch = events(by_bucket.get(bucket, []), offset) if bucket in by_bucket else empty_events()
            offset += len(by_bucket.get(bucket, []))
            out = step_bucket(state, batch, watermark, step_settings)
            if eager_lateness_ms is not None:
                final_ms = final_watermark(batch, watermark, eager_lateness_ms)
                if final_ms > watermark:
                    out.extend(step_bucket(state, empty_events(), final_ms, step_settings))
            if len(state):
                blobs[bucket] = state.encode()
            else:
                blobs.pop(bucket, None)
            columns = out.columns(step_settings.agg_function, step_settings.window_ms)
            for i in range(len(columns["kind"])):
                out_rows.append(tuple(_norm(columns[c][i]) for c in OPERATOR_COLUMNS if c != "src_offset"))
    return sorted(out_rows, key=repr)


def _norm(x):
    if isinstance(x, float | np.floating):
        return None if np.isnan(x) else float(x)
    if isinstance(x, np.integer | np.bool_):
        return x.item()
    return x


def random_batches(seed: int, apps: int = 12, batches: int = 8) -> list[tuple[list, int]]:
    rng = np.random.default_rng(seed)
    out, t = [], 0
    for _ in range(batches):
        rows = []
        for _ in range(int(rng.integers(20, 80))):
            app = f"app-{int(rng.integers(0, apps))}"
            # mostly recent, some late, some exact repeats and same-instant events
            ts = t + int(rng.integers(-15_000, 30_000))
            rows.append((app, max(ts, 0), float(np.round(rng.normal(100, 10), 1))))
            if rng.random() < 0.05:
                rows.append(rows[-1])
            if rng.random() < 0.05:
                rows.append((rows[-1][0], rows[-1][1], rows[-1][2] + 1))
        t += 30_000
        out.append((rows, t - 5_000))
    return out


@pytest.mark.parametrize("agg_function", ["avg", "none", "percentile95", "count"])
def test_one_bucket_for_all_gives_what_one_bucket_per_application_gives(agg_function):
    batches = random_batches(seed=len(agg_function))
    step_settings = settings(agg_function, 10_000)
    alone = run_batches(batches, lambda app: int(app.split("-")[1]), step_settings)
    together = run_batches(batches, lambda app: 0, step_settings)
    three = run_batches(batches, lambda app: hash(app) % 3, step_settings)
    assert len(alone) > 50
    assert {r[0] for r in alone} == {"result", "dead_letter"}
    assert together == alone
    assert three == alone


@pytest.mark.parametrize("agg_function", ["avg", "none", "percentile95"])
@pytest.mark.parametrize("lateness_ms", [0, 7_000])
def test_closing_what_a_batch_made_final_changes_no_row(agg_function, lateness_ms):
    """Scoring in batch N what Spark's watermark only passes in batch N+1 gives the same rows
    (results and dead letters, late ones included), whatever the buckets, with Spark's watermark
    rule: the largest event time seen so far minus the allowed lateness."""
    batches, seen_max, watermark = [], 0, 0
    for rows, _ in random_batches(seed=7 + lateness_ms, apps=9):
        batches.append((rows, watermark))
        seen_max = max([seen_max, *(ts for _, ts, _ in rows)])
        watermark = max(watermark, seen_max - lateness_ms)
    batches.append(([], watermark + 100_000))  # the end: everything closes
    step_settings = settings(agg_function, 10_000)
    window_end = run_batches(batches, lambda app: int(app.split("-")[1]) % 2, step_settings)
    assert sum(r[0] == "result" for r in window_end) > 30
    assert any(r[OPERATOR_COLUMNS.index("reason")] == "late" for r in window_end)
    for bucket_of in (lambda app: 0, lambda app: int(app.split("-")[1]) % 2, lambda app: int(app.split("-")[1])):
        eager = run_batches(batches, bucket_of, step_settings, eager_lateness_ms=lateness_ms)
        assert eager == window_end


def test_idle_applications_are_evicted_inside_the_bucket_and_the_bucket_state_empties():
    s = settings("avg", 10_000, idle_timeout_ms=60_000)
    state = BucketState.empty()
    step_bucket(state, events([("a", 1_000, 1.0), ("b", 50_000, 2.0)]), 0, s)
    assert state.names == ["a", "b"] and state.due.tolist() == [10_000, 60_000]
    out = step_bucket(state, empty_events(), 60_000, s)  # closes both windows; nobody idle long enough yet
    assert out.count_results() == 4 and sorted(state.names) == ["a", "b"]
    assert state.due.tolist() == [61_000, 110_000]  # last event + idle timeout
    step_bucket(state, empty_events(), 61_000, s)
    assert state.names == ["b"]
    step_bucket(state, empty_events(), 110_000, s)
    assert len(state) == 0
    assert len(BucketState.decode(state.encode())) == 0


def test_none_keeps_one_event_per_instant_and_dead_letters_the_others_with_a_reason():
    s = settings("none", 0)
    state = BucketState.empty()
    rows = [("a", 5_000, 1.5), ("a", 5_000, 0.0), ("a", 5_000, 1.5), ("a", 6_000, 3.0), ("b", 5_000, 7.0)]
    out = step_bucket(state, events(rows), 0, s).columns("none", 0)
    dead = sorted(zip(out["src_offset"], out["reason"], out["detail"], strict=True))
    assert [(o, r) for o, r, _ in dead] == [(1, "conflicting_value"), (2, "duplicate")]
    assert "1.5" in dead[0][2]
    # a later batch: the same instant again (kept value is in the state) and a new one
    state = BucketState.decode(state.encode())
    out = step_bucket(state, events([("a", 5_000, -1e300), ("a", 5_000, 1.5), ("a", 7_000, 1.0)], 10), 0, s)
    columns = out.columns("none", 0)
    assert sorted(zip(columns["src_offset"], columns["reason"], strict=True)) == [
        (10, "conflicting_value"),
        (11, "duplicate"),
    ]
    # closing: one result per (application, ts, detector), with the first value
    columns = step_bucket(state, empty_events(), 100_000, s).columns("none", 0)
    points = sorted(
        {(a, t, v) for a, t, v in zip(columns["application"], columns["ts_ms"], columns["agg_value"], strict=True)}
    )
    assert points == [("a", 5_000, 1.5), ("a", 6_000, 3.0), ("a", 7_000, 1.0), ("b", 5_000, 7.0)]
    keys = list(zip(columns["application"], columns["ts_ms"], columns["detector"], strict=True))
    assert len(keys) == len(set(keys))


def test_none_refuses_a_second_value_at_an_instant_even_without_deduplication():
    s = settings("none", 0, deduplicate=False)
    out = step_bucket(BucketState.empty(), events([("a", 5, 1.0), ("a", 5, 1.0), ("a", 5, 2.0)]), 0, s)
    assert sorted(out.columns("none", 0)["reason"].tolist()) == ["conflicting_value", "duplicate"]


@pytest.mark.parametrize("agg_function,expected", [("count", 3.0), ("sum", 6.0), ("percentile50", 2.0)])
def test_windows_count_every_event_at_one_instant_with_different_values(agg_function, expected):
    s = settings(agg_function, 10_000)
    state = BucketState.empty()
    out = step_bucket(state, events([("a", 5, 1.0), ("a", 5, 2.0), ("a", 5, 3.0)]), 0, s)
    assert not out
    columns = step_bucket(state, empty_events(), 10_000, s).columns(agg_function, 10_000)
    assert set(columns["agg_value"].tolist()) == {expected}


def test_a_failing_detector_only_affects_its_own_application_and_points():
    s = settings("none", 0, detectors=(("boom", get_detector_class("fail_on_value"), {"fail_value": 13.0}),))
    state = BucketState.empty()
    rows = [("a", 1, 1.0), ("a", 2, 13.0), ("a", 3, 2.0), ("b", 1, 5.0)]
    step_bucket(state, events(rows), 0, s)
    columns = step_bucket(state, empty_events(), 100, s).columns("none", 0)
    got = sorted(zip(columns["kind"], columns["application"], columns["ts_ms"], columns["reason"], strict=True))
    assert got == [
        ("dead_letter", "a", 2, "detector_error"),
        ("result", "a", 1, None),
        ("result", "a", 3, None),
        ("result", "b", 1, None),
    ]


def test_late_events_are_dead_lettered_with_the_watermark_in_the_detail():
    s = settings("avg", 10_000)
    state = BucketState.empty()
    step_bucket(state, events([("a", 1_000, 1.0)]), 0, s)
    out = step_bucket(state, events([("a", 2_000, 5.0), ("b", 2_000, 5.0), ("b", 25_000, 1.0)]), 20_000, s)
    columns = out.columns("avg", 10_000)
    late = [
        (a, d)
        for a, r, d in zip(columns["application"], columns["reason"], columns["detail"], strict=True)
        if r == "late"
    ]
    assert [a for a, _ in late] == ["a", "b"]
    assert all("1970-01-01T00:00:20.000Z" in d for _, d in late)


