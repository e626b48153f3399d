"""BucketProcessor (jobs/stateful_operator.py) run in memory by PySpark's TwsTester, without a SparkSession.

``pyspark.sql.streaming.tws_tester.TwsTester`` (PySpark 4.2) calls a
processor's ``init``, ``handleInputRows`` and ``handleExpiredTimer`` as
``transformWithStateInPandas`` does, with an in-memory value state and
event-time timers that fire when the test moves the watermark. What it does
not simulate, and these tests therefore do not claim: Spark's own watermark
(the test sets it), the shuffle and packing (input frames are built here with
jobs/packing.py's Arrow function, as the operator receives them), and the
order of a batch's input and timer calls (TwsTester fires due timers as soon as
the watermark moves, before any input of that batch).

Its late-event filter is off (the extractor puts every packed row in the
future): the job hides the watermark marker from the operator's input, so Spark
hands it every row and the step decides what is late.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql.streaming.tws_tester import TwsTester

from jobs.config import parse_config
from jobs.packing import REJECT_BUCKET, pack_batches
from jobs.result_format import OPERATOR_COLUMNS
from jobs.stateful_operator import STATE_NAME, TIMER_GRANULARITY_MS, BucketProcessor
from jobs.stateful_step import BucketState, StepSettings, empty_events, final_watermark, step_bucket
from tests.test_config import config_with

W = 10_000
LATENESS = 2_000
IDLE = 60_000
BUCKET = 0


def _stream():
    raw = config_with(
        aggregation={"agg_function": "avg", "agg_window_millis": W, "allowed_lateness_millis": LATENESS},
        detectors=[{"name": "ema", "params": {"warmup": 2}}],
        idle_timeout_millis=IDLE,
    )
    return parse_config(raw).streams[0]


def _tester() -> TwsTester:
    return TwsTester(BucketProcessor(_stream()), timeMode="EventTime", outputMode="Append",
                     eventTimeExtractor=lambda row: 2**62)


def _packed(bucket: int, rows: list[tuple[str, int, float]], first_offset: int = 0) -> pd.DataFrame:
    """One bucket's valid events as the operator receives them: packed rows of arrays, in pandas."""
    n = len(rows)
    events = pa.table({
        "bucket": pa.array([bucket] * n, pa.int32()), "gkey": [r[0] for r in rows],
        "ts_ms": pa.array([r[1] for r in rows], pa.int64()), "value": pa.array([r[2] for r in rows], pa.float64()),
        "reason": pa.nulls(n, pa.string()), "detail": pa.nulls(n, pa.string()),
        "raw": pa.nulls(n, pa.binary()), "kafka_key": pa.nulls(n, pa.binary()),
        "src_topic": ["metrics"] * n, "src_partition": pa.array([0] * n, pa.int32()),
        "src_offset": pa.array(range(first_offset, first_offset + n), pa.int64()),
    })
    return pa.Table.from_batches(list(pack_batches(iter(events.to_batches())))).to_pandas()


def _timers(tester: TwsTester, key: int) -> list[int]:
    tester.handle.setGroupingKey(key)
    return list(tester.handle.listTimers())


def _results(frame: pd.DataFrame) -> list[tuple[str, int, float]]:
    rows = frame[frame["kind"] == "result"] if len(frame) else frame
    return [(a, int(t), float(v)) for a, t, v in zip(rows.get("application", []), rows.get("ts_ms", []),
                                                      rows.get("agg_value", []), strict=True)]


def test_the_timer_fires_for_an_idle_application_closes_its_window_then_evicts_it():
    tester = _tester()
    out = tester.testInPandas(BUCKET, _packed(BUCKET, [("a", 1_000, 1.0), ("a", 2_000, 2.0)]))
    assert _results(out) == []  # window [0, 10 s) still open
    assert _timers(tester, BUCKET) == [W]  # one timer, at the window's end
    assert len(tester.setWatermark(W - 1)) == 0  # not due yet: nothing fires
    fired = tester.setWatermark(W)  # no more events for "a": only the timer can close its window
    assert list(fired.columns) == list(OPERATOR_COLUMNS)
    assert _results(fired) == [("a", 0, 1.5)]
    assert fired["detector"].tolist() == ["ema"]
    # the fired timer is gone; the next one is the application's idle eviction
    assert _timers(tester, BUCKET) == [2_000 + IDLE]
    state = BucketState.decode(bytes(tester.peekValueState(STATE_NAME, BUCKET)[0]))
    assert state.names == ["a"] and state.timer_ms == 2_000 + IDLE
    evicted = tester.setWatermark(2_000 + IDLE)
    assert len(evicted) == 0
    assert tester.peekValueState(STATE_NAME, BUCKET) is None  # nothing left: state cleared
    assert _timers(tester, BUCKET) == []


def test_rejects_pass_through_as_dead_letters_without_state_or_timer():
    rejects = pa.table({
        "bucket": pa.array([REJECT_BUCKET] * 2, pa.int32()), "gkey": ["\x00invalid"] * 2,
        "ts_ms": pa.nulls(2, pa.int64()), "value": pa.nulls(2, pa.float64()),
        "reason": ["invalid_json", "missing_field"], "detail": ["line 1", "no 'ts'"],
        "raw": [b"{oops", b'{"application": "a"}'], "kafka_key": [None, b"k"],
        "src_topic": ["metrics"] * 2, "src_partition": pa.array([1, 1], pa.int32()), "src_offset": [7, 8],
    })
    frame = pa.Table.from_batches(list(pack_batches(iter(rejects.to_batches())))).to_pandas()
    tester = _tester()
    out = tester.testInPandas(REJECT_BUCKET, frame)
    assert out["kind"].tolist() == ["dead_letter", "dead_letter"]
    assert out["reason"].tolist() == ["invalid_json", "missing_field"]
    assert [bytes(r) for r in out["raw"]] == [b"{oops", b'{"application": "a"}']
    assert out["src_offset"].tolist() == [7, 8]
    assert tester.peekValueState(STATE_NAME, REJECT_BUCKET) is None
    assert _timers(tester, REJECT_BUCKET) == []


def test_the_state_round_trips_through_the_value_state_and_a_new_processor_carries_on():
    first = [("a", 1_000, 1.0), ("b", 3_000, 5.0), ("a", 12_000, 4.0)]
    second = [("a", 14_000, 6.0), ("b", 13_000, 7.0), ("a", 31_000, 1.0)]
    straight = _tester()
    straight.testInPandas(BUCKET, _packed(BUCKET, first))
    blob = straight.peekValueState(STATE_NAME, BUCKET)
    assert blob is not None and BucketState.decode(bytes(blob[0])).encode() == bytes(blob[0])
    # another processor (another executor, after a restart) from the stored value alone
    restarted = _tester()
    restarted.updateValueState(STATE_NAME, BUCKET, blob)
    want = straight.testInPandas(BUCKET, _packed(BUCKET, second, first_offset=3))
    got = restarted.testInPandas(BUCKET, _packed(BUCKET, second, first_offset=3))
    pd.testing.assert_frame_equal(got, want)
    assert _results(got) == [("a", 10_000, 5.0), ("b", 10_000, 7.0)]  # closed at the bucket's own bound 29 s
    assert restarted.peekValueState(STATE_NAME, BUCKET) == straight.peekValueState(STATE_NAME, BUCKET)


def test_a_batch_steps_at_sparks_watermark_then_again_at_its_own_bound():
    # a bucket with "a"'s window [0, 10 s) open and, as after a restart, no timer registered
    tester = _tester()
    tester.testInPandas(BUCKET, _packed(BUCKET, [("a", 1_000, 1.0), ("a", 4_000, 3.0)]))
    stored = tester.peekValueState(STATE_NAME, BUCKET)
    tester = _tester()
    tester.updateValueState(STATE_NAME, BUCKET, stored)
    spark_watermark = 15_000
    assert len(tester.setWatermark(spark_watermark)) == 0  # no timer in this tester: nothing fires
    events = [("a", 16_000, 8.0), ("c", 25_000, 2.0), ("c", 33_000, 4.0)]
    out = tester.testInPandas(BUCKET, _packed(BUCKET, events))
    # first step, at Spark's watermark (15 s): "a"'s [0, 10 s), before this batch's events are added;
    # second step, at max event time - lateness (31 s): [10 s, 20 s) of "a" and [20 s, 30 s) of "c"
    assert final_watermark({"ts_ms": np.array([16_000, 25_000, 33_000])}, spark_watermark, LATENESS) == 31_000
    assert _results(out) == [("a", 0, 2.0), ("a", 10_000, 8.0), ("c", 20_000, 2.0)]
    # the same rows as the pure step called twice
    state = BucketState.decode(bytes(stored[0]))
    settings = StepSettings.of(_stream())
    events_np = {
        "application": np.array([e[0] for e in events], dtype=object), "ts_ms": np.array([e[1] for e in events]),
        "value": np.array([e[2] for e in events]), "src_topic": np.array(["metrics"] * 3, dtype=object),
        "src_partition": np.zeros(3, dtype=np.int32), "src_offset": np.arange(3, dtype=np.int64),
    }
    expected = step_bucket(state, events_np, spark_watermark, settings)
    expected.extend(step_bucket(state, empty_events(), 31_000, settings))
    want = pd.DataFrame(expected.columns("avg", W), columns=OPERATOR_COLUMNS)
    pd.testing.assert_frame_equal(out, want)
    # one timer, at the earliest open window's end (c's [30 s, 40 s)), rounded up to the granularity
    assert _timers(tester, BUCKET) == [-(-40_000 // TIMER_GRANULARITY_MS) * TIMER_GRANULARITY_MS]


def test_a_bucket_that_starts_behind_a_moved_watermark_times_its_first_window_end():
    # TwsTester refuses, as Spark does, a timer at or behind the watermark: the registration must be ahead
    tester = _tester()
    tester.setWatermark(50_000)
    out = tester.testInPandas(BUCKET, _packed(BUCKET, [("a", 51_000, 1.0), ("a", 49_000, 9.0)]))
    assert out["reason"].tolist() == ["late"]  # [40 s, 50 s) had closed at Spark's watermark
    assert _timers(tester, BUCKET) == [60_000]
