"""The stateful per-application operator: windowing + detectors, in Spark state.

This is the PySpark counterpart of ``mapGroupsWithState``: the job groups the
parsed events by application and calls::

    pack(events).groupBy("gkey").transformWithStateInPandas(
        DetectionProcessor(stream), OUTPUT_SCHEMA, "Append", "EventTime")

Per key and micro-batch the processor makes one state ``get`` and one
``update`` (each is a round trip to the JVM state server): the key's whole state
-- open windows, the watermark it last closed at, and every detector's own
``to_state()`` blob -- is one binary value. It closes the windows the watermark
has passed, feeds their values to the detectors in event-time order, and emits
one output row per (window or point, detector). Events whose window was already
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
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql.streaming import StatefulProcessor, StatefulProcessorHandle
from pyspark.sql.types import (
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
            yield _rejects(events)
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
            yield _concat(out)

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
            yield _concat(out)

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

    def _close(self, application: str, state: KeyState, watermark: int) -> list[pd.DataFrame]:
        state.windows, starts, agg_values = aggregation.close_windows(
            state.windows, watermark, self.agg_function, self.window_ms
        )
        if len(starts) == 0:
            return []
        scored, frames = [], []
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
                frames.extend(_detector_errors(application, label, t, v, err) for t, v, err in failed)
        if scored:
            frames.insert(0, self._results(application, scored))
        return frames

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

    def _results(self, application: str, scored: list[tuple]) -> pd.DataFrame:
        """One frame for all detectors' results of this key: one construction, not one per detector."""
        n = sum(len(starts) for _, starts, _, _ in scored)
        return pd.DataFrame(
            {
                "kind": np.full(n, KIND_RESULT, dtype=object),
                "application": np.full(n, application, dtype=object),
                "ts_ms": np.concatenate([s for _, s, _, _ in scored]),
                "agg_function": np.full(n, self.agg_function, dtype=object),
                "agg_window_millis": np.full(n, self.window_ms, dtype=np.int64),
                "agg_value": np.concatenate([v for _, _, v, _ in scored]),
                "detector": np.concatenate([np.full(len(s), label, dtype=object) for label, s, _, _ in scored]),
                "value_lower_limit": np.concatenate([r.value_lower_limit for *_, r in scored]),
                "value_upper_limit": np.concatenate([r.value_upper_limit for *_, r in scored]),
                "anomaly_probability": np.concatenate([r.anomaly_probability for *_, r in scored]),
                "is_anomaly": np.concatenate([r.is_anomaly for *_, r in scored]).astype(bool),
                **{column: np.full(n, None, dtype=object) for column in DEAD_LETTER_COLUMNS},
            },
            columns=OUTPUT_COLUMNS,
        )


def _restore(cls: type, params: dict[str, Any], blob: bytes | None) -> Any:
    """The key's detector: fresh before its first point, else rebuilt from its state blob."""
    return cls(**params) if blob is None else cls.from_state(blob, **params)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if len(frames) == 1:
        return frames[0]
    with warnings.catch_warnings():
        # all-null dead-letter columns next to result columns: the dtype rules pandas
        # warns about do not matter here, Arrow casts to OUTPUT_SCHEMA anyway
        warnings.simplefilter("ignore", FutureWarning)
        return pd.concat(frames, ignore_index=True)


def _rejects(events: dict[str, np.ndarray]) -> pd.DataFrame:
    """Dead-letter rows from unpacked events (jobs/packing.py) that carry reason/detail/raw/kafka_key."""
    n = len(events["src_offset"])
    out = pd.DataFrame(
        {
            "kind": np.full(n, KIND_DEAD_LETTER, dtype=object),
            **{column: events[column] for column in DEAD_LETTER_COLUMNS},
        },
        columns=OUTPUT_COLUMNS,
    )
    return out


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
        }
    ).assign(application=application, ts_ms=ts_ms, agg_value=values)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _detector_errors(
    application: str, label: str, starts: np.ndarray, values: np.ndarray, err: Exception
) -> pd.DataFrame:
    out = pd.DataFrame(index=range(len(starts)), columns=OUTPUT_COLUMNS)
    out["kind"] = KIND_DEAD_LETTER
    out["application"] = application
    out["ts_ms"] = starts
    out["agg_value"] = values
    out["detector"] = label
    out["reason"] = "detector_error"
    out["detail"] = f"{label}: {type(err).__name__}: {err}"[:2000]
    return out
