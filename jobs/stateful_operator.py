"""The stateful operator: a thin Spark adapter over the per-bucket step.

This is the PySpark counterpart of ``mapGroupsWithState``. The job hashes
applications into buckets, packs each bucket's events per task
(jobs/packing.py) and calls::

    pack(events, buckets).groupBy("bucket").transformWithStateInPandas(
        BucketProcessor(stream), OUTPUT_SCHEMA, "Append", "EventTime")

Per bucket and micro-batch the processor makes one state ``get`` and one
``update`` (each a round trip to the JVM state server), keeps at most one
event-time timer, and yields one frame; the windowing, repeats, late events,
detectors and eviction of every application in the bucket are
:func:`jobs.stateful_step.step_bucket`, pure and unit-tested without Spark. The
processor itself (timers, rejects, state, the double step below) is run in
memory by PySpark's ``TwsTester`` in tests/test_stateful_operator.py.

Results leave as soon as they are final. Spark hands a batch the watermark
computed at the end of the previous one, so the windows (or ``none`` points)
a batch's own events complete would wait a whole batch for it; but Spark's
next watermark is at least this bucket's largest event time minus the allowed
lateness, so after stepping at Spark's watermark the processor steps the
bucket again at that bound (:func:`jobs.stateful_step.final_watermark`): what
it closes could only get late events from now on. Same rows, a batch earlier.

The timer fires when the earliest "due" application of the bucket needs
closing or eviction (rounded up to :data:`TIMER_GRANULARITY_MS`): after a
batch that moves the watermark Spark runs a batch without data in which only
expired timers are called, and a bucket that got no events closes there what
the new watermark passed. A bucket that does get events steps its due
applications at once.

Rows of :data:`jobs.packing.REJECT_BUCKET` are messages that failed validation
in the source stage; they pass through as dead letters, so that one query, one
Kafka read, carries both results and rejects.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle
from pyspark.sql.types import (
    BinaryType,
    BooleanType,
    DataType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from jobs.config import StreamConfig
from jobs.packing import REJECT_BUCKET, unpack
from jobs.result_format import OPERATOR_COLUMNS, OPERATOR_TYPES
from jobs.stateful_step import (
    NO_TIMER,
    BucketState,
    StepSettings,
    empty_events,
    final_watermark,
    rejects,
    step_bucket,
)

__all__ = ["OUTPUT_SCHEMA", "BucketProcessor"]

TIMER_GRANULARITY_MS = 1_000
STATE_NAME = "bucket_state"

_SPARK_TYPES: dict[str, DataType] = {
    "string": StringType(),
    "bigint": LongType(),
    "int": IntegerType(),
    "double": DoubleType(),
    "boolean": BooleanType(),
    "binary": BinaryType(),
}
# the columns and their types come from jobs/result_format.py; only "kind" is never null
OUTPUT_SCHEMA = StructType(
    [StructField(name, _SPARK_TYPES[OPERATOR_TYPES[name]], name != "kind") for name in OPERATOR_COLUMNS]
)
STATE_SCHEMA = StructType([StructField("blob", BinaryType(), False)])


class BucketProcessor(StatefulProcessor):
    """Load the bucket's state -> step -> save it -> move its timer -> yield the output."""

    def __init__(self, stream: StreamConfig) -> None:
        self.settings = StepSettings.of(stream)
        self.allowed_lateness_ms = stream.aggregation.allowed_lateness_millis

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.handle = handle
        self.state = handle.getValueState(STATE_NAME, STATE_SCHEMA)

    def handleInputRows(self, key: Any, rows: Iterator[pd.DataFrame], timerValues: Any) -> Iterator[pd.DataFrame]:
        frames = list(rows)
        events = unpack(frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True))
        if key[0] == REJECT_BUCKET:
            yield pd.DataFrame(rejects(events), columns=OPERATOR_COLUMNS)
            return
        yield from self._step(events, int(timerValues.getCurrentWatermarkInMs()))

    def handleExpiredTimer(self, key: Any, timerValues: Any, expiredTimerInfo: Any) -> Iterator[pd.DataFrame]:
        yield from self._step(empty_events(), int(timerValues.getCurrentWatermarkInMs()), fired=True)

    def close(self) -> None:
        pass

    def _step(self, events: dict, watermark_ms: int, fired: bool = False) -> Iterator[pd.DataFrame]:
        stored = self.state.get()
        state = BucketState.empty() if stored is None else BucketState.decode(bytes(stored[0]))
        if fired and state.timer_ms <= watermark_ms:
            state.timer_ms = NO_TIMER  # it just fired: nothing left to delete
        out = step_bucket(state, events, watermark_ms, self.settings)
        # what these events made final leaves now, not when Spark's watermark catches up next batch
        final_ms = final_watermark(events, watermark_ms, self.allowed_lateness_ms)
        if final_ms > watermark_ms:
            out.extend(step_bucket(state, empty_events(), final_ms, self.settings))
        self._schedule(state)
        if len(state):
            self.state.update((state.encode(),))
        else:
            self.state.clear()  # every application evicted: the bucket needs no state and no timer
        if out:
            columns = out.columns(self.settings.agg_function, self.settings.window_ms)
            yield pd.DataFrame(columns, columns=OPERATOR_COLUMNS)

    def _schedule(self, state: BucketState) -> None:
        """One timer per bucket, at its earliest due application.

        Each move costs two calls to the JVM state server (delete, register),
        about once per bucket per batch on a steady stream: a few ms per batch
        at the default 32 buckets. Rounding up to :data:`TIMER_GRANULARITY_MS`
        skips the moves that would not change which batch fires it. (A coarser
        granularity, such as a minute, would make an idle bucket's windows wait up
        to a minute of event time, and a busy one's until its next data batch, a
        whole trigger later.)
        """
        target = NO_TIMER
        if len(state):
            due = int(state.due.min())
            target = -(-due // TIMER_GRANULARITY_MS) * TIMER_GRANULARITY_MS
        if target == state.timer_ms:
            return
        # Deleting a timer that is due in this batch also keeps it from firing
        # after handleInputRows has already done its work.
        if state.timer_ms != NO_TIMER:
            self.handle.deleteTimer(state.timer_ms)
        if target != NO_TIMER:
            self.handle.registerTimer(target)
        state.timer_ms = target
