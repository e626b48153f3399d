"""The stateful per-application operator: windowing + detectors, in Spark state.

This is the PySpark counterpart of ``mapGroupsWithState``: the job groups the
parsed events by application and calls::

    packed = pack(events).groupBy("gkey").transformWithStateInPandas(
        DetectionProcessor(stream), PACKED_OUTPUT_SCHEMA, "Append", "EventTime")
    scored = flatten(packed, stream)       # OUTPUT_SCHEMA: one row per result / dead letter

Per key and micro-batch the processor makes one state ``get`` and one
``update`` (each is a round trip to the JVM state server): the key's whole state
-- open windows, the watermark it last closed at, and every detector's own
``to_state()`` blob -- is one binary value. It closes the windows the watermark
has passed, feeds their values to the detectors in event-time order, and emits
one result per (window or point, detector) -- as arrays, one row per detector,
which :func:`flatten` expands in the JVM. Events whose window was already
scored come back as dead letters with reason ``late``, repeats of an event
already counted (same ts and value) with reason ``duplicate``; a detector that raises
sends that key's points to the dead letters with reason ``detector_error`` and
keeps its previous state, so one bad key cannot stop the others.

Keys that have open windows but no new data are served by an event-time timer
at the end of their earliest open window; a key idle for longer than
``idle_timeout_millis`` of event time is evicted.

Input rows are packed (jobs/packing.py): one row holds many events of one key
as arrays. Rows whose ``gkey`` is :data:`jobs.source.INVALID_KEY` are messages
that failed validation in the source stage; they pass through as dead letters
so that one query, one Kafka read, carries both results and rejects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from detectors import get_detector_class
from detectors.base import StateError, pack_state, unpack_state
from jobs import aggregation
from jobs.config import StreamConfig
from jobs.packing import unpack
from jobs.source import INVALID_KEY

KIND_RESULT = "result"
KIND_DEAD_LETTER = "dead_letter"
KEY_STATE_VERSION = 1
TIMER_GRANULARITY_MS = 60_000
DUPLICATE_DETAIL = "an event with the same application, ts and value is already counted in this window"

OUTPUT_SCHEMA = StructType(
    [
        StructField("kind", StringType(), False),
        StructField("application", StringType(), True),
        StructField("ts_ms", LongType(), True),
        StructField("agg_function", StringType(), True),
        StructField("agg_window_millis", LongType(), True),
        StructField("agg_value", DoubleType(), True),
        StructField("detector", StringType(), True),
        StructField("value_lower_limit", DoubleType(), True),
        StructField("value_upper_limit", DoubleType(), True),
        StructField("anomaly_probability", DoubleType(), True),
        StructField("is_anomaly", BooleanType(), True),
        # dead letters only
        StructField("reason", StringType(), True),
        StructField("detail", StringType(), True),
        StructField("raw", BinaryType(), True),
        StructField("kafka_key", BinaryType(), True),
        StructField("src_topic", StringType(), True),
        StructField("src_partition", IntegerType(), True),
        StructField("src_offset", LongType(), True),
    ]
)
OUTPUT_COLUMNS = [f.name for f in OUTPUT_SCHEMA.fields]
# the columns only dead letters fill; null in results
DEAD_LETTER_COLUMNS = ("reason", "detail", "raw", "kafka_key", "src_topic", "src_partition", "src_offset")
# What the Python operator emits: one row per (key, detector) of results, or per
# group of dead letters, with arrays in the per-point columns; flatten() turns it
# into OUTPUT_SCHEMA rows in the JVM. Building and shipping one pandas row per
# point cost more than scoring it.
_PER_ROW = ("kind", "application", "detector")
_CONSTANT = ("agg_function", "agg_window_millis")
ARRAY_COLUMNS = tuple(c for c in OUTPUT_COLUMNS if c not in _PER_ROW + _CONSTANT)
PACKED_OUTPUT_SCHEMA = StructType(
    [
        *(OUTPUT_SCHEMA[c] for c in _PER_ROW),
        StructField("n", IntegerType(), False),
        *(StructField(c, ArrayType(OUTPUT_SCHEMA[c].dataType), True) for c in ARRAY_COLUMNS),
    ]
)
PACKED_OUTPUT_COLUMNS = [f.name for f in PACKED_OUTPUT_SCHEMA.fields]
STATE_SCHEMA = StructType([StructField("blob", BinaryType(), False)])


class KeyState:
    """Everything one application carries between micro-batches."""

    def __init__(self, agg_function: str) -> None:
        self.windows = aggregation.WindowState.empty(agg_function)
        self.last_event_ms = np.iinfo(np.int64).min
        self.timer_ms = -1
        self.detector_blobs: dict[str, bytes] = {}

    def encode(self) -> bytes:
        fields: dict[str, Any] = aggregation.to_fields(self.windows)
        fields["last_event_ms"] = int(self.last_event_ms)
        fields["timer_ms"] = int(self.timer_ms)
        for label, blob in self.detector_blobs.items():
            fields["d:" + label] = np.frombuffer(blob, dtype=np.uint8)
        return pack_state("key_state", KEY_STATE_VERSION, {}, fields)

    @staticmethod
    def decode(blob: bytes, agg_function: str) -> KeyState:
        header, fields = unpack_state(blob)
        if header["name"] != "key_state" or header["version"] > KEY_STATE_VERSION:
            raise StateError(f"unsupported key state {header}; start from a new checkpoint")
        state = KeyState(agg_function)
        state.windows = aggregation.from_fields(fields)
        state.last_event_ms = int(fields["last_event_ms"])
        state.timer_ms = int(fields["timer_ms"])
        state.detector_blobs = {k[2:]: v.tobytes() for k, v in fields.items() if k.startswith("d:")}
        return state


class DetectionProcessor(StatefulProcessor):
    """Thin adapter: state in, aggregation + detectors, state and rows out."""

    def __init__(self, stream: StreamConfig) -> None:
        self.agg_function = stream.aggregation.agg_function
        self.window_ms = stream.aggregation.agg_window_millis
        # Classes are resolved here, on the driver, and pickled by reference: the
        # Python workers import the same modules (built-ins or installed plugins).
        self.detectors = [(d.label, get_detector_class(d.name), dict(d.params)) for d in stream.detectors]
        self.idle_timeout_ms = stream.idle_timeout_millis
        self.deduplicate = stream.aggregation.deduplicate

    def init(self, handle: StatefulProcessorHandle) -> None:
        self.handle = handle
        self.state = handle.getValueState("key_state", STATE_SCHEMA)

    # -- Spark callbacks --------------------------------------------------------
    def handleInputRows(self, key: Any, rows: Iterator[pd.DataFrame], timerValues: Any) -> Iterator[pd.DataFrame]:
        application = key[0]
        frames = list(rows)
        events = unpack(frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True))
        if application == INVALID_KEY:
            yield _frame([_rejects(events)])
            return
        watermark = int(timerValues.getCurrentWatermarkInMs())
        # Events of a key arrive in shuffle order, which may differ on replay.
        # Sorting by event time, then source position, makes results deterministic.
        topics = pd.factorize(events["src_topic"], sort=True)[0]
        order = np.lexsort((events["src_offset"], events["src_partition"], topics, events["ts_ms"]))
        events = _select(events, order)
        ts, values = events["ts_ms"], events["value"]
        state = self._load()
        # Close what the watermark has passed *before* adding: an event whose
        # window ends at or before the watermark is late whether or not this
        # key's timer happened to close that window already.
        out = self._close(application, state, watermark)
        if self.deduplicate:
            state.windows, duplicate = aggregation.find_duplicates(
                state.windows, ts, values, self.agg_function, self.window_ms
            )
            if duplicate.any():
                out.append(_dropped(_select(events, duplicate), application, "duplicate", DUPLICATE_DETAIL))
                events = _select(events, ~duplicate)
                ts, values = events["ts_ms"], events["value"]
        state.windows, late = aggregation.add_events(state.windows, ts, values, self.agg_function, self.window_ms)
        if len(ts):
            state.last_event_ms = max(state.last_event_ms, int(ts[-1]))
        if late.any():
            detail = f"event time is behind the watermark: its window was closed at {_iso(state.windows.closed_until)}"
            out.append(_dropped(_select(events, late), application, "late", detail))
        self._schedule(state)
        self.state.update((state.encode(),))
        if out:
            yield _frame(out)

    def handleExpiredTimer(self, key: Any, timerValues: Any, expiredTimerInfo: Any) -> Iterator[pd.DataFrame]:
        application = key[0]
        watermark = int(timerValues.getCurrentWatermarkInMs())
        state = self._load()
        out = self._close(application, state, watermark)
        if len(state.windows.starts) == 0 and watermark - state.last_event_ms >= self.idle_timeout_ms:
            self.state.clear()  # idle key: forget it; its timer just fired, none is left
        else:
            state.timer_ms = -1 if state.timer_ms <= watermark else state.timer_ms
            self._schedule(state)
            self.state.update((state.encode(),))
        if out:
            yield _frame(out)

    def close(self) -> None:
        pass

    # -- internals --------------------------------------------------------------
    def _load(self) -> KeyState:
        stored = self.state.get()
        if stored is None:
            return KeyState(self.agg_function)
        return KeyState.decode(bytes(stored[0]), self.agg_function)

    def _schedule(self, state: KeyState) -> None:
        """Keep exactly one timer per key, moved as rarely as possible.

        The timer serves keys that stop sending: it closes their open windows,
        or evicts them after ``idle_timeout_millis``. A key that does send gets
        its windows closed in ``handleInputRows``, so its timer only needs to
        be roughly right: rounding it up to :data:`TIMER_GRANULARITY_MS`
        means it moves about once a minute of event time instead of every
        window -- each move costs two calls to the JVM. The price: an idle
        key's last windows are emitted up to a minute of event time late.
        """
        target = aggregation.next_close_time(state.windows, self.agg_function, self.window_ms)
        if target is None:
            target = state.last_event_ms + self.idle_timeout_ms
        target = -(-target // TIMER_GRANULARITY_MS) * TIMER_GRANULARITY_MS
        if target == state.timer_ms:
            return
        # Deleting a timer that is due in this batch also keeps it from firing
        # after handleInputRows has already done its work.
        if state.timer_ms >= 0:
            self.handle.deleteTimer(state.timer_ms)
        self.handle.registerTimer(target)
        state.timer_ms = target

    def _close(self, application: str, state: KeyState, watermark: int) -> list[dict[str, Any]]:
        state.windows, starts, agg_values = aggregation.close_windows(
            state.windows, watermark, self.agg_function, self.window_ms
        )
        if len(starts) == 0:
            return []
        scored: list[tuple] = []
        errors: list[dict[str, Any]] = []
        for label, cls, params in self.detectors:
            blob = state.detector_blobs.get(label)
            try:
                detector = _restore(cls, params, blob)
                scored.append((label, starts, agg_values, detector.update_batch(starts, agg_values)))
                state.detector_blobs[label] = detector.to_state()
            except Exception:
                # a detector failure is isolated to this key (and to the failing points)
                ok, failed = self._score_one_by_one(label, cls, params, blob, state, starts, agg_values)
                scored.extend(ok)
                errors.extend(_detector_errors(application, label, t, v, err) for t, v, err in failed)
        return [_result(application, *entry) for entry in scored] + errors

    def _score_one_by_one(
        self,
        label: str,
        cls: type,
        params: dict[str, Any],
        blob: bytes | None,
        state: KeyState,
        starts: np.ndarray,
        agg_values: np.ndarray,
    ) -> tuple[list[tuple], list[tuple]]:
        """After a failed batch: score point by point, dead-letter only the points that fail.

        A failing point leaves the detector as it was before that point.
        """
        ok, failed = [], []
        for i in range(len(starts)):
            point_ts, point_value = starts[i : i + 1], agg_values[i : i + 1]
            try:
                detector = _restore(cls, params, blob)
                result = detector.update_batch(point_ts, point_value)
                blob = detector.to_state()
                ok.append((label, point_ts, point_value, result))
            except Exception as err:
                failed.append((point_ts, point_value, err))
        if blob is not None:
            state.detector_blobs[label] = blob
        return ok, failed


def _restore(cls: type, params: dict[str, Any], blob: bytes | None) -> Any:
    """The key's detector: fresh before its first point, else rebuilt from its state blob."""
    return cls(**params) if blob is None else cls.from_state(blob, **params)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Packed output rows -> the frame Spark converts to PACKED_OUTPUT_SCHEMA (None where a column is unused)."""
    return pd.DataFrame({c: [row.get(c) for row in rows] for c in PACKED_OUTPUT_COLUMNS}, columns=PACKED_OUTPUT_COLUMNS)


def _packed(kind: str, application: str | None, detector: str | None, **arrays: np.ndarray) -> dict[str, Any]:
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1:  # flatten() indexes every array by the same position
        raise ValueError(f"packed output arrays differ in length: {lengths}")
    return {"kind": kind, "application": application, "detector": detector, "n": lengths.pop(), **arrays}


def _result(application: str, label: str, starts: np.ndarray, agg_values: np.ndarray, result: Any) -> dict[str, Any]:
    return _packed(
        KIND_RESULT,
        application,
        label,
        ts_ms=starts,
        agg_value=agg_values,
        value_lower_limit=result.value_lower_limit,
        value_upper_limit=result.value_upper_limit,
        anomaly_probability=result.anomaly_probability,
        is_anomaly=np.asarray(result.is_anomaly, dtype=bool),
    )


def _rejects(events: dict[str, np.ndarray], application: str | None = None, **extra: np.ndarray) -> dict[str, Any]:
    """Dead letters from unpacked events (jobs/packing.py) that carry reason/detail/raw/kafka_key."""
    return _packed(KIND_DEAD_LETTER, application, None, **{c: events[c] for c in DEAD_LETTER_COLUMNS}, **extra)


def _select(events: dict[str, np.ndarray], which: np.ndarray) -> dict[str, np.ndarray]:
    return {name: column[which] for name, column in events.items()}


def _dropped(events: dict[str, np.ndarray], application: str, reason: str, detail: str) -> pd.DataFrame:
    """Dead letters for valid events that are not counted (late, duplicate).

    Valid events carry no raw bytes through the job, so the value is re-encoded
    as canonical JSON; the source position goes to the headers as for rejects.
    """
    ts_ms, values = events["ts_ms"], events["value"]
    raw = [
        json.dumps({"application": application, "value": float(v), "ts": _iso(int(t))}, separators=(",", ":")).encode()
        for t, v in zip(ts_ms, values, strict=True)
    ]
    n = len(ts_ms)
    return _rejects(
        {
            **events,
            "reason": np.full(n, reason, dtype=object),
            "detail": np.full(n, detail, dtype=object),
            "raw": np.array(raw, dtype=object),
            "kafka_key": np.full(n, application.encode(), dtype=object),
        },
        application,
        ts_ms=ts_ms,
        agg_value=values,
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _detector_errors(
    application: str, label: str, starts: np.ndarray, values: np.ndarray, err: Exception
) -> dict[str, Any]:
    n = len(starts)
    return _packed(
        KIND_DEAD_LETTER,
        application,
        label,
        ts_ms=starts,
        agg_value=values,
        reason=np.full(n, "detector_error", dtype=object),
        detail=np.full(n, f"{label}: {type(err).__name__}: {err}"[:2000], dtype=object),
    )


def flatten(packed: DataFrame, stream: StreamConfig) -> DataFrame:
    """The operator's packed rows -> one OUTPUT_SCHEMA row per result or dead letter, in the JVM.

    Each packed row becomes one array of structs (``transform`` over the
    positions) that ``inline`` expands: linear in the number of points. (An
    ``explode`` next to the array columns would copy every array into every
    exploded row.)
    """
    is_result = F.col("kind") == KIND_RESULT

    def element(column: str, position: F.Column) -> F.Column:
        value = F.col(column)[position]  # null when the array is (a dead letter has no bounds...)
        if isinstance(OUTPUT_SCHEMA[column].dataType, DoubleType):
            value = F.when(~F.isnan(value), value)  # NaN marks a missing bound (warm-up)
        return value.alias(column)

    positions = F.sequence(F.lit(0), F.col("n") - 1)
    points = F.transform(positions, lambda i: F.struct(*[element(c, i) for c in ARRAY_COLUMNS]))
    rows = packed.where(F.col("n") > 0).select(*_PER_ROW, F.inline(points))
    constants = {
        "agg_function": F.when(is_result, F.lit(stream.aggregation.agg_function)),
        "agg_window_millis": F.when(is_result, F.lit(stream.aggregation.agg_window_millis).cast("long")),
    }
    return rows.select(*[constants[c].alias(c) if c in constants else F.col(c) for c in OUTPUT_COLUMNS])
