"""The per-bucket step, application by application (one KeyState blob each): the step's oracle.

The same rules as jobs/stateful_step.py, applied to one application at a time
over tests/oracles/windows_oracle.py instead of to all the applications of a
bucket at once as segmented numpy. tests/test_step_vectorised.py runs random
input through both and compares every output column and the state. Not used
by the job.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from detectors import get_detector_class
from detectors.base import BatchResult
from detectors.state import StateError, pack_state, unpack_state
from tests.oracles import windows_oracle as windows

KIND_RESULT = "result"
KIND_DEAD_LETTER = "dead_letter"
BUCKET_STATE_VERSION = 1
# An application's state inside its bucket's value: magic and version, closed_until,
# last_event_ms, the lengths of the window arrays, the number of detectors; then
# the arrays' bytes; then per detector its label and its own state blob.
_KEY_MAGIC = b"KS\x02\x00"
_WINDOW_ARRAYS = (
    ("starts", np.int64),
    ("ts", np.int64),
    ("counts", np.int64),
    ("sums", np.float64),
    ("mins", np.float64),
    ("maxs", np.float64),
    ("seen_ts", np.int64),
    ("seen_values", np.float64),
)
_KEY_HEADER = struct.Struct(f"<4sqq{len(_WINDOW_ARRAYS)}qI")
_LABEL_HEADER = struct.Struct("<HI")
NO_TIMER = -1
DUPLICATE_DETAIL = "an event with the same application, ts and value is already counted"
# The operator's output columns, in order (jobs/detection.py gives their Spark types).
RESULT_COLUMNS = (
    "kind",
    "application",
    "ts_ms",
    "agg_function",
    "agg_window_millis",
    "agg_value",
    "detector",
    "value_lower_limit",
    "value_upper_limit",
    "anomaly_probability",
    "is_anomaly",
    "explanation",
)
# the columns only dead letters fill; null in results
DEAD_LETTER_COLUMNS = ("reason", "detail", "raw", "kafka_key", "src_topic", "src_partition", "src_offset")
OUTPUT_COLUMNS = RESULT_COLUMNS + DEAD_LETTER_COLUMNS
EVENT_COLUMNS = ("application", "ts_ms", "value", "src_topic", "src_partition", "src_offset")
_INT64_MIN = int(np.iinfo(np.int64).min)


@dataclass(frozen=True)
class StepSettings:
    """What a bucket's step needs to know about its stream."""

    agg_function: str
    window_ms: int
    # (label, detector class, validated params)
    detectors: tuple[tuple[str, type, dict[str, Any]], ...]
    idle_timeout_ms: int
    deduplicate: bool

    @staticmethod
    def of(stream: Any) -> StepSettings:
        """From a :class:`jobs.config.StreamConfig`."""
        return StepSettings(
            agg_function=stream.aggregation.agg_function,
            window_ms=stream.aggregation.agg_window_millis,
            # classes resolved here, on the driver, and pickled by reference: the
            # Python workers import the same modules (built-ins or installed plugins)
            detectors=tuple((d.label, get_detector_class(d.name), dict(d.params)) for d in stream.detectors),
            idle_timeout_ms=stream.idle_timeout_millis,
            deduplicate=stream.aggregation.deduplicate,
        )


# -- state ---------------------------------------------------------------------------
class KeyState:
    """Everything one application carries between micro-batches."""

    def __init__(self, agg_function: str) -> None:
        self.windows = windows.WindowState.empty(agg_function)
        self.last_event_ms = _INT64_MIN
        self.detector_blobs: dict[str, bytes] = {}

    def due_ms(self, settings: StepSettings) -> int:
        """Event time at which this application next needs the operator: a window closes, or eviction."""
        close = windows.next_close_time(self.windows, settings.agg_function, settings.window_ms)
        return close if close is not None else self.last_event_ms + settings.idle_timeout_ms

    def encode(self) -> bytes:
        """A compact fixed layout (not the detectors' generic field format): one per application per batch."""
        w = self.windows
        arrays = [np.ascontiguousarray(getattr(w, name), dtype) for name, dtype in _WINDOW_ARRAYS]
        parts = [
            _KEY_HEADER.pack(
                _KEY_MAGIC, w.closed_until, self.last_event_ms, *(len(a) for a in arrays), len(self.detector_blobs)
            )
        ]
        parts += [a.tobytes() for a in arrays]
        for label, blob in self.detector_blobs.items():
            name = label.encode()
            parts += [_LABEL_HEADER.pack(len(name), len(blob)), name, blob]
        return b"".join(parts)

    @staticmethod
    def decode(blob: bytes) -> KeyState:
        if blob[:4] != _KEY_MAGIC:
            raise StateError("unsupported application state (not written by this version); start from a new checkpoint")
        _, closed_until, last_event_ms, *sizes, n_detectors = _KEY_HEADER.unpack_from(blob, 0)
        pos = _KEY_HEADER.size
        arrays = {}
        for (name, dtype), n in zip(_WINDOW_ARRAYS, sizes, strict=True):
            arrays[name] = np.frombuffer(blob, dtype, n, pos).copy()
            pos += 8 * n
        state = KeyState.__new__(KeyState)
        state.windows = windows.WindowState(closed_until=closed_until, **arrays)
        state.last_event_ms = last_event_ms
        state.detector_blobs = {}
        for _ in range(n_detectors):
            name_len, blob_len = _LABEL_HEADER.unpack_from(blob, pos)
            pos += _LABEL_HEADER.size
            label = blob[pos : pos + name_len].decode()
            pos += name_len
            state.detector_blobs[label] = blob[pos : pos + blob_len]
            pos += blob_len
        return state


class BucketState:
    """One bucket's applications: names, due times and per-application state blobs.

    Blobs are kept encoded; only the applications a step touches are decoded
    and re-encoded, the others are copied through as bytes.
    """

    def __init__(self, names: list[str], due: np.ndarray, blobs: list[bytes], timer_ms: int = NO_TIMER) -> None:
        self.names = names
        self.due = due
        self.blobs = blobs
        self.timer_ms = timer_ms
        self.index = {name: i for i, name in enumerate(names)}

    @staticmethod
    def empty() -> BucketState:
        return BucketState([], np.zeros(0, dtype=np.int64), [])

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str) -> int:
        """Index of ``name``, adding it (no state yet, never due) when new."""
        i = self.index.get(name)
        if i is None:
            i = len(self.names)
            self.names.append(name)
            self.blobs.append(b"")
            self.due = np.append(self.due, np.iinfo(np.int64).max)
            self.index[name] = i
        return i

    def drop(self, gone: np.ndarray) -> None:
        """Forget the applications at the indices where ``gone`` is true (evicted)."""
        if not gone.any():
            return
        keep = np.flatnonzero(~gone)
        self.names = [self.names[i] for i in keep]
        self.blobs = [self.blobs[i] for i in keep]
        self.due = self.due[keep]
        self.index = {name: i for i, name in enumerate(self.names)}

    def encode(self) -> bytes:
        sizes = np.fromiter((len(b) for b in self.blobs), dtype=np.int64, count=len(self.blobs))
        # application names cannot hold control characters (jobs/source.py), so NUL separates them
        fields = {
            "names": "\x00".join(self.names),
            "due": self.due,
            "sizes": sizes,
            "blobs": b"".join(self.blobs),
            "timer_ms": int(self.timer_ms),
        }
        return pack_state("bucket_state", BUCKET_STATE_VERSION, {}, fields)

    @staticmethod
    def decode(blob: bytes) -> BucketState:
        header, fields = unpack_state(blob, "bucket state")
        if header["name"] != "bucket_state" or header["version"] != BUCKET_STATE_VERSION:
            raise StateError(f"unsupported bucket state {header}; start from a new checkpoint")
        due = fields["due"]
        names = fields["names"].split("\x00") if len(due) else []
        ends = np.cumsum(fields["sizes"]).tolist()
        data = fields["blobs"]
        blobs = [data[a:b] for a, b in zip([0, *ends][:-1], ends, strict=True)]
        return BucketState(names, due, blobs, int(fields["timer_ms"]))


# -- outputs -------------------------------------------------------------------------
@dataclass
class Outputs:
    """A bucket's results and dead letters, collected as arrays and built into columns once."""

    _results: list[tuple[str, str, np.ndarray, np.ndarray, BatchResult]] = field(default_factory=list)
    _dead: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add_results(self, application: str, label: str, ts: np.ndarray, values: np.ndarray, r: BatchResult) -> None:
        self._results.append((application, label, ts, values, r))

    def add_dead_letters(self, columns: dict[str, np.ndarray]) -> None:
        self._dead.append(columns)

    def count_results(self) -> int:
        return sum(len(ts) for _, _, ts, _, _ in self._results)

    def __bool__(self) -> bool:
        return bool(self._results or self._dead)

    def columns(self, agg_function: str, window_ms: int) -> dict[str, np.ndarray]:
        """Every output row of the bucket as :data:`OUTPUT_COLUMNS` (results first)."""
        parts = []
        if self._results:
            parts.append(self._result_columns(agg_function, window_ms))
        parts.extend(_dead_letter_frame(d) for d in self._dead)
        if not parts:
            return {c: np.zeros(0, dtype=object) for c in OUTPUT_COLUMNS}
        if len(parts) == 1:
            return parts[0]
        return {c: _concat([p[c] for p in parts]) for c in OUTPUT_COLUMNS}

    def _result_columns(self, agg_function: str, window_ms: int) -> dict[str, np.ndarray]:
        scored = self._results
        sizes = [len(ts) for _, _, ts, _, _ in scored]
        n = sum(sizes)
        return {
            "kind": np.full(n, KIND_RESULT, dtype=object),
            "application": np.repeat(np.array([a for a, *_ in scored], dtype=object), sizes),
            "ts_ms": np.concatenate([ts for _, _, ts, _, _ in scored]),
            "agg_function": np.full(n, agg_function, dtype=object),
            "agg_window_millis": np.full(n, window_ms, dtype=np.int64),
            "agg_value": np.concatenate([v for _, _, _, v, _ in scored]),
            "detector": np.repeat(np.array([label for _, label, *_ in scored], dtype=object), sizes),
            "value_lower_limit": np.concatenate([r.value_lower_limit for *_, r in scored]),
            "value_upper_limit": np.concatenate([r.value_upper_limit for *_, r in scored]),
            "anomaly_probability": np.concatenate([r.anomaly_probability for *_, r in scored]),
            "is_anomaly": np.concatenate([r.is_anomaly for *_, r in scored]).astype(bool),
            "explanation": _concat([_explanations(r) for *_, r in scored]),
            **{column: np.full(n, None, dtype=object) for column in DEAD_LETTER_COLUMNS},
        }


def _explanations(result: BatchResult) -> np.ndarray:
    """Detectors that explain their anomalies carry an ``explanation`` column; others get nulls."""
    explanation = getattr(result, "explanation", None)
    if explanation is None:
        return np.full(len(result), None, dtype=object)
    return np.asarray(explanation, dtype=object)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    if any(a.dtype == object for a in arrays):
        return np.concatenate([a.astype(object) for a in arrays])
    return np.concatenate(arrays)


def _dead_letter_frame(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(columns["reason"])
    out = {c: columns[c] if c in columns else np.full(n, None, dtype=object) for c in OUTPUT_COLUMNS}
    out["kind"] = np.full(n, KIND_DEAD_LETTER, dtype=object)
    return out


def rejects(events: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Output columns for records that failed validation in the source stage (they keep raw bytes)."""
    return _dead_letter_frame({c: events[c] for c in DEAD_LETTER_COLUMNS})


# -- the step ------------------------------------------------------------------------
def empty_events() -> dict[str, np.ndarray]:
    """No events: what a timer call passes to :func:`step_bucket`."""
    return {
        "application": np.zeros(0, dtype=object),
        "ts_ms": np.zeros(0, dtype=np.int64),
        "value": np.zeros(0, dtype=np.float64),
        "src_topic": np.zeros(0, dtype=object),
        "src_partition": np.zeros(0, dtype=np.int32),
        "src_offset": np.zeros(0, dtype=np.int64),
    }


def step_bucket(
    state: BucketState, events: dict[str, np.ndarray], watermark_ms: int, settings: StepSettings
) -> Outputs:
    """One micro-batch (or timer) of one bucket: updates ``state`` in place, returns what to emit.

    ``events`` holds :data:`EVENT_COLUMNS` in any order. Every application
    with events, and every application due at ``watermark_ms``, is stepped.
    """
    out = Outputs()
    # names -> the bucket's application indices, hashing each distinct name once
    local: dict[str, int] = {}
    names = events["application"]
    codes = np.fromiter((local.setdefault(a, len(local)) for a in names), np.int64, len(names))
    codes = np.array([state.add(name) for name in local], dtype=np.int64)[codes] if len(codes) else codes
    # Events arrive in shuffle order, which may differ on replay: sorting by
    # application, event time, then source position makes results deterministic.
    topics = np.unique(events["src_topic"].astype(str), return_inverse=True)[1] if len(codes) else codes
    order = np.lexsort((events["src_offset"], events["src_partition"], topics, events["ts_ms"], codes))
    codes = codes[order]
    events = {name: events[name][order] for name in EVENT_COLUMNS}
    with_events, starts = np.unique(codes, return_index=True)
    ends = [*starts[1:].tolist(), len(codes)][: len(starts)]
    bounds = dict(zip(with_events.tolist(), zip(starts.tolist(), ends, strict=True), strict=True))
    due = np.flatnonzero(state.due <= watermark_ms)
    gone = np.zeros(len(state), dtype=bool)
    for i in np.union1d(with_events, due).tolist():
        a, b = bounds.get(i, (0, 0))
        app_events = {name: column[a:b] for name, column in events.items()}
        blob = state.blobs[i]
        key = KeyState.decode(blob) if blob else KeyState(settings.agg_function)
        key = step_application(state.names[i], key, app_events, watermark_ms, settings, out)
        if key is None:
            gone[i] = True
        else:
            state.blobs[i] = key.encode()
            state.due[i] = key.due_ms(settings)
    state.drop(gone)
    return out


def step_application(
    application: str,
    key: KeyState,
    events: dict[str, np.ndarray],
    watermark_ms: int,
    settings: StepSettings,
    out: Outputs,
) -> KeyState | None:
    """One application's micro-batch; ``events`` sorted by (ts, source position). None: evict it."""
    agg_function, window_ms = settings.agg_function, settings.window_ms
    # Close what the watermark has passed *before* adding: an event whose
    # window ends at or before the watermark is late whether or not an earlier
    # step happened to close that window already.
    key.windows, starts, agg_values = windows.close_windows(key.windows, watermark_ms, agg_function, window_ms)
    if len(starts):
        _score(application, key, starts, agg_values, settings, out)
    if len(events["ts_ms"]):
        events = _drop_repeats(application, key, events, settings, out)
        key.windows, late = windows.add_events(
            key.windows, events["ts_ms"], events["value"], agg_function, window_ms
        )
        if late.any():
            closed = _iso(key.windows.closed_until)
            detail = f"event time is behind the watermark: its window was closed at {closed}"
            out.add_dead_letters(_refused(application, _select(events, late), "late", detail))
        accepted = events["ts_ms"][~late]
        if len(accepted):
            key.last_event_ms = max(key.last_event_ms, int(accepted[-1]))
    idle = watermark_ms - key.last_event_ms >= settings.idle_timeout_ms
    if len(key.windows.starts) == 0 and idle:
        return None
    return key


def _drop_repeats(
    application: str, key: KeyState, events: dict[str, np.ndarray], settings: StepSettings, out: Outputs
) -> dict[str, np.ndarray]:
    """Dead-letter the events that must not be counted again; returns the rest."""
    ts, values = events["ts_ms"], events["value"]
    if settings.agg_function == "none":
        # a point is keyed by its ts: one event per instant, whatever `deduplicate` says
        duplicate, conflict, kept = windows.find_same_instant(key.windows, ts, values)
        if conflict.any():
            for kept_value in np.unique(kept[conflict]):
                which = conflict & (kept == kept_value)
                detail = (
                    "another value was already accepted for this application and ts: "
                    f"{float(kept_value)!r} (the first by topic, partition, offset)"
                )
                out.add_dead_letters(_refused(application, _select(events, which), "conflicting_value", detail))
        dropped = duplicate | conflict
    elif settings.deduplicate:
        key.windows, duplicate = windows.find_duplicates(
            key.windows, ts, values, settings.agg_function, settings.window_ms
        )
        dropped = duplicate
    else:
        return events
    if duplicate.any():
        out.add_dead_letters(_refused(application, _select(events, duplicate), "duplicate", DUPLICATE_DETAIL))
    return _select(events, ~dropped) if dropped.any() else events


def _score(
    application: str,
    key: KeyState,
    starts: np.ndarray,
    agg_values: np.ndarray,
    settings: StepSettings,
    out: Outputs,
) -> None:
    """Feed the closed windows to every detector in event-time order; isolate failures to their points."""
    for label, cls, params in settings.detectors:
        blob = key.detector_blobs.get(label)
        try:
            detector = _restore(cls, params, blob)
            out.add_results(application, label, starts, agg_values, detector.update_batch(starts, agg_values))
            key.detector_blobs[label] = detector.to_state()
        except Exception:
            # one point at a time: a failing point is dead-lettered and leaves the
            # detector as it was before that point; the others are scored
            for i in range(len(starts)):
                point_ts, point_value = starts[i : i + 1], agg_values[i : i + 1]
                try:
                    detector = _restore(cls, params, blob)
                    result = detector.update_batch(point_ts, point_value)
                    blob = detector.to_state()
                    out.add_results(application, label, point_ts, point_value, result)
                except Exception as err:
                    out.add_dead_letters(_detector_error(application, label, point_ts, point_value, err))
            if blob is not None:
                key.detector_blobs[label] = blob


def _restore(cls: type, params: dict[str, Any], blob: bytes | None) -> Any:
    """The application's detector: fresh before its first point, else rebuilt from its state blob."""
    return cls(**params) if blob is None else cls.from_state(blob, **params)


def _select(events: dict[str, np.ndarray], which: np.ndarray) -> dict[str, np.ndarray]:
    return {name: column[which] for name, column in events.items()}


def _refused(application: str, events: dict[str, np.ndarray], reason: str, detail: str) -> dict[str, np.ndarray]:
    """Dead letters for valid events that are not counted (late, duplicate, conflicting_value).

    Valid events carry no raw bytes through the job, so the value is re-encoded
    as canonical JSON; the source position goes to the headers as for rejects.
    """
    ts_ms, values = events["ts_ms"], events["value"]
    raw = [
        json.dumps({"application": application, "value": float(v), "ts": _iso(int(t))}, separators=(",", ":")).encode()
        for t, v in zip(ts_ms, values, strict=True)
    ]
    n = len(ts_ms)
    return {
        "application": np.full(n, application, dtype=object),
        "ts_ms": ts_ms,
        "agg_value": values,
        "reason": np.full(n, reason, dtype=object),
        "detail": np.full(n, detail, dtype=object),
        "raw": np.array(raw, dtype=object),
        "kafka_key": np.full(n, application.encode(), dtype=object),
        "src_topic": events["src_topic"],
        "src_partition": events["src_partition"],
        "src_offset": events["src_offset"],
    }


def _detector_error(
    application: str, label: str, starts: np.ndarray, values: np.ndarray, err: Exception
) -> dict[str, np.ndarray]:
    n = len(starts)
    return {
        "application": np.full(n, application, dtype=object),
        "ts_ms": starts,
        "agg_value": values,
        "detector": np.full(n, label, dtype=object),
        "reason": np.full(n, "detector_error", dtype=object),
        "detail": np.full(n, f"{label}: {type(err).__name__}: {err}"[:2000], dtype=object),
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
