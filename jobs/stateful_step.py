"""The stateful operator's work for one bucket of applications, as pure functions (no Spark).

The job hashes every application into one of ``buckets`` buckets and groups by
bucket (jobs/stateful_operator.py), so Spark's per-key costs -- a state-server round
trip for ``get`` and ``update``, a timer, an Arrow frame out -- are paid once
per bucket per micro-batch instead of once per application. Everything that
happens inside a bucket is here, and it is done for all the bucket's
applications at once, over numpy arrays, not application by application
(a Python loop over applications would cost its overhead for every application
in every batch, more than the rest of the job):

* :class:`BucketState` -- the bucket's one state value, *columnar*: its
  applications' names, per application the event time at which it next needs
  attention ("due": its earliest open window closes, or it has been idle for
  ``idle_timeout_millis``), its ``closed_until`` and last event time; one table
  of the open windows (or, for raw-value functions, open events) of all its
  applications and one of the events already counted (for duplicates), each
  row tagged with its application's index; and per detector label one state
  blob per application (the detector's own ``to_state`` bytes);
* :func:`step_bucket` -- one micro-batch (or a timer) for the bucket: sort the
  events by (application, ts, topic, partition, offset); close the windows the
  watermark passed for every application with events or due, as segmented
  numpy over (application, window); score the closed windows with each
  detector's multi-series :meth:`~detectors.base.Detector.update_many` (in
  event-time order per application); find repeats, late events and same-instant
  conflicts over all events at once; add the events; evict the idle;
* :class:`Outputs` -- the bucket's results and dead letters as numpy columns.

Per application the rules are exactly those of a per-application operator,
bit for bit: tests/test_step_vectorised.py runs random input through this step
and through a plain application-by-application reference step
(tests/oracles/stateful_step_oracle.py) and compares every output column and the
state; tests/test_stateful_step.py runs the same input through 1 and many
applications per bucket. Which events are late depends only on the watermark
of the batch, not on when a window happened to be closed.

>>> settings = StepSettings("avg", 10_000, (("ema", get_detector_class("ema"), {"warmup": 1}),), 10**9, True)
>>> state = BucketState.empty()
>>> events = {"application": np.array(["a", "a"], dtype=object), "ts_ms": np.array([1_000, 2_000]),
...           "value": np.array([1.0, 3.0]), "src_topic": np.array(["t", "t"], dtype=object),
...           "src_partition": np.array([0, 0]), "src_offset": np.array([7, 8])}
>>> out = step_bucket(state, events, watermark_ms=0, settings=settings)
>>> out.count_results(), state.names, state.due.tolist()
(0, ['a'], [10000])
>>> out = step_bucket(state, empty_events(), watermark_ms=10_000, settings=settings)
>>> columns = out.columns("avg", 10_000)
>>> columns["application"].tolist(), columns["ts_ms"].tolist(), columns["agg_value"].tolist()
(['a'], [0], [2.0])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from detectors import get_detector_class
from detectors.base import BatchResult, Detector, concat_results
from detectors.state import StateError, pack_state, unpack_state
from incidents import Feedback, IncidentSettings, IncidentState, Scored, StreamKey, maintenance_mask, process
from incidents.machine import LABELS, next_deadline
from jobs import aggregations, windows
from jobs.result_format import (
    DEAD_LETTER_COLUMNS,
    KIND_DEAD_LETTER,
    KIND_INCIDENT,
    KIND_RESULT,
    OPERATOR_COLUMNS,
    iso_ms,
)

# 2: columnar (tables of windows and seen events over all the bucket's applications);
# 1 kept one blob per application (tests/oracles/stateful_step_oracle.py) and is refused (start from a new checkpoint)
BUCKET_STATE_VERSION = 2
NO_TIMER = -1
DUPLICATE_DETAIL = "an event with the same application, ts and value is already counted"
EVENT_COLUMNS = ("application", "ts_ms", "value", "src_topic", "src_partition", "src_offset")
_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)
# The bucket's tables. Windows: raw-value functions keep one row per open event
# (its window start, ts and value), the others one row per open window (partial
# aggregates). Seen: the counted events of open windows (non-raw functions with
# deduplicate). Every row carries its application's index ("app").
_RAW_ROWS = (("app", np.int64), ("start", np.int64), ("ts", np.int64), ("value", np.float64))
_PARTIAL_ROWS = (("app", np.int64), ("start", np.int64), *((p.name, p.dtype) for p in aggregations.PARTIALS))
_SEEN_ROWS = (("app", np.int64), ("ts", np.int64), ("value", np.float64))


@dataclass(frozen=True)
class StepSettings:
    """What a bucket's step needs to know about its stream."""

    agg_function: str
    window_ms: int
    # (label, detector class, validated params)
    detectors: tuple[tuple[str, type[Detector], dict[str, Any]], ...]
    idle_timeout_ms: int
    deduplicate: bool
    # the incident layer (incidents/), None when off
    incidents: IncidentSettings | None = None

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
            incidents=stream.incidents if stream.incidents.enabled else None,
        )



def _table(columns: tuple[tuple[str, type], ...], n: int = 0) -> dict[str, np.ndarray]:
    return {name: np.zeros(n, dtype=dtype) for name, dtype in columns}


def _take(table: dict[str, np.ndarray], which: np.ndarray) -> dict[str, np.ndarray]:
    return {name: column[which] for name, column in table.items()}


def _cat(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([a[name], b[name]]) for name in a}


class BucketState:
    """One bucket's applications, columnar: per-application arrays, row tables, detector blobs.

    ``windows`` rows are kept sorted by application index (stable: within an
    application, open windows by start and raw events in arrival order, as a
    per-application state keeps them); so are ``seen`` rows.
    """

    def __init__(
        self,
        agg_function: str,
        names: list[str],
        due: np.ndarray,
        closed_until: np.ndarray,
        last_event: np.ndarray,
        windows: dict[str, np.ndarray],
        seen: dict[str, np.ndarray],
        detectors: dict[str, list[bytes]],
        timer_ms: int = NO_TIMER,
        incidents: bytes = b"",
    ) -> None:
        self.agg_function = agg_function
        self.names = names
        self.due = due
        self.closed_until = closed_until
        self.last_event = last_event
        self.windows = windows
        self.seen = seen
        # per detector label, one blob per application; b"" = no state yet (fresh detector)
        self.detectors = detectors
        self.timer_ms = timer_ms
        self.index = {name: i for i, name in enumerate(names)}
        # the incident tracks (incidents.IncidentState), encoded; decoded only by a step that needs them
        self.incident_blob = incidents
        self.incident_state: IncidentState | None = None

    @staticmethod
    def empty(agg_function: str | None = None) -> BucketState:
        """A bucket with no applications (the function is fixed by the first step if not given)."""
        z = np.zeros(0, dtype=np.int64)
        return BucketState(agg_function or "", [], z, z.copy(), z.copy(), {}, {}, {})

    def __len__(self) -> int:
        return len(self.names)

    def _ensure_tables(self, agg_function: str) -> None:
        if not self.agg_function:
            self.agg_function = agg_function
        elif self.agg_function != agg_function:
            raise StateError(f"bucket state holds {self.agg_function!r} windows, not {agg_function!r}")
        if not self.windows:
            raw = aggregations.get(agg_function).raw
            self.windows = _table(_RAW_ROWS if raw else _PARTIAL_ROWS)
            self.seen = _table(_SEEN_ROWS)

    def add_all(self, names: list[str]) -> np.ndarray:
        """Indices of ``names``, adding the new ones (no state yet, never due) in the given order."""
        new = [name for name in names if name not in self.index]
        if new:
            start = len(self.names)
            self.names.extend(new)
            self.index.update((name, start + k) for k, name in enumerate(new))
            grow = len(new)
            self.due = np.concatenate([self.due, np.full(grow, _INT64_MAX, dtype=np.int64)])
            self.closed_until = np.concatenate([self.closed_until, np.full(grow, _INT64_MIN, dtype=np.int64)])
            self.last_event = np.concatenate([self.last_event, np.full(grow, _INT64_MIN, dtype=np.int64)])
            for blobs in self.detectors.values():
                blobs.extend([b""] * grow)
        return np.array([self.index[name] for name in names], dtype=np.int64)

    def detector_blobs(self, label: str) -> list[bytes]:
        blobs = self.detectors.get(label)
        if blobs is None:
            blobs = self.detectors[label] = [b""] * len(self.names)
        return blobs

    def drop(self, gone: np.ndarray) -> None:
        """Forget the applications at the indices where ``gone`` is true (evicted), and their rows."""
        if not gone.any():
            return
        keep = np.flatnonzero(~gone)
        renumber = np.cumsum(~gone) - 1
        if self.incident_state is not None:
            self.incident_state.drop_applications({self.names[i] for i in np.flatnonzero(gone).tolist()})
        self.names = [self.names[i] for i in keep]
        self.due, self.closed_until, self.last_event = self.due[keep], self.closed_until[keep], self.last_event[keep]
        for label, blobs in self.detectors.items():
            self.detectors[label] = [blobs[i] for i in keep]
        for table in (self.windows, self.seen):
            if table:
                rows = ~gone[table["app"]]
                table.update(_take(table, rows))
                table["app"] = renumber[table["app"]]
        self.index = {name: i for i, name in enumerate(self.names)}

    def encode(self) -> bytes:
        # application names cannot hold control characters (jobs/source.py), so NUL separates them
        fields: dict[str, Any] = {
            "agg_function": self.agg_function,
            "names": "\x00".join(self.names),
            "due": self.due,
            "closed_until": self.closed_until,
            "last_event": self.last_event,
            "timer_ms": int(self.timer_ms),
        }
        for prefix, table in (("w.", self.windows), ("s.", self.seen)):
            if not table:
                continue
            # rows are sorted by application: stored as rows per application, not an index per row
            app = table["app"]
            if len(app) > 1 and (app[1:] < app[:-1]).any():
                raise AssertionError("bucket state rows out of application order")  # a bug, not bad input
            fields[prefix + "rows_per_app"] = np.bincount(app, minlength=len(self.names)).astype(np.int32)
            fields.update((prefix + name, column) for name, column in table.items() if name != "app")
        for label, blobs in self.detectors.items():
            fields["d.sizes." + label] = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
            fields["d.blobs." + label] = b"".join(blobs)
        if self.incident_state is not None:
            self.incident_blob = self.incident_state.encode() if len(self.incident_state) else b""
        if self.incident_blob:
            fields["incidents"] = self.incident_blob
        return pack_state("bucket_state", BUCKET_STATE_VERSION, {}, fields)

    @staticmethod
    def decode(blob: bytes) -> BucketState:
        header, fields = unpack_state(blob, "bucket state")
        if header["name"] != "bucket_state" or header["version"] != BUCKET_STATE_VERSION:
            raise StateError(
                f"unsupported bucket state {header} (this version reads version {BUCKET_STATE_VERSION}, "
                "the columnar layout); start from a new checkpoint"
            )
        due = fields["due"]
        names = fields["names"].split("\x00") if len(due) else []
        tables = []
        for prefix in ("w.", "s."):
            table = {k[2:]: v for k, v in fields.items() if k.startswith(prefix)}
            if table:
                per_app = table.pop("rows_per_app")
                table = {"app": np.repeat(np.arange(len(per_app), dtype=np.int64), per_app), **table}
            tables.append(table)
        open_rows, seen = tables
        detectors = {}
        for key, sizes in fields.items():
            if key.startswith("d.sizes."):
                label = key[len("d.sizes.") :]
                data = fields["d.blobs." + label]
                ends = np.cumsum(sizes).tolist()
                detectors[label] = [data[a:b] for a, b in zip([0, *ends][:-1], ends, strict=True)]
        return BucketState(
            fields["agg_function"], names, due, fields["closed_until"], fields["last_event"], open_rows, seen,
            detectors, int(fields["timer_ms"]), fields.get("incidents", b""),
        )

    def incidents(self, settings: IncidentSettings) -> IncidentState:
        """The bucket's incident tracks (decoded on first use in a step)."""
        if self.incident_state is None:
            if self.incident_blob:
                self.incident_state = IncidentState.decode(self.incident_blob)
                self.incident_state.fit(settings)
            else:
                self.incident_state = IncidentState.for_settings(settings)
        return self.incident_state


# -- outputs -------------------------------------------------------------------------
@dataclass
class Outputs:
    """A bucket's results and dead letters, as column dicts, built into one set of columns once."""

    _results: list[dict[str, np.ndarray]] = field(default_factory=list)
    _dead: list[dict[str, np.ndarray]] = field(default_factory=list)
    _incidents: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add_results(self, columns: dict[str, np.ndarray]) -> None:
        if len(columns["ts_ms"]):
            self._results.append(columns)

    def add_dead_letters(self, columns: dict[str, np.ndarray]) -> None:
        if len(columns["reason"]):
            self._dead.append(columns)

    def add_incidents(self, records: list[dict[str, Any]], event_ms: list[int]) -> None:
        """Incident transitions (incidents.RECORD_FIELDS dicts) and the event time of each."""
        if not records:
            return
        self._incidents.append(
            {
                "application": np.array([r["application"] for r in records], dtype=object),
                "ts_ms": np.array(event_ms, dtype=np.int64),
                "detector": np.array([r["detector"] for r in records], dtype=object),
                "detail": np.array([json.dumps(r, separators=(",", ":")) for r in records], dtype=object),
                "kafka_key": np.array([r["incident_id"].encode() for r in records], dtype=object),
                "src_offset": np.array([r["seq"] for r in records], dtype=np.int64),
            }
        )

    def count_results(self) -> int:
        return sum(len(r["ts_ms"]) for r in self._results)

    def extend(self, other: Outputs) -> None:
        """Append ``other``'s rows after these (a second step of the same bucket in the same batch)."""
        self._results.extend(other._results)
        self._dead.extend(other._dead)
        self._incidents.extend(other._incidents)

    def __bool__(self) -> bool:
        return bool(self._results or self._dead or self._incidents)

    def columns(self, agg_function: str, window_ms: int) -> dict[str, np.ndarray]:
        """Every output row of the bucket as :data:`OPERATOR_COLUMNS` (results first)."""
        parts = [_result_frame(r, agg_function, window_ms) for r in self._results]
        parts.extend(_dead_letter_frame(d) for d in self._dead)
        parts.extend(_incident_frame(i, agg_function, window_ms) for i in self._incidents)
        if not parts:
            return {c: np.zeros(0, dtype=object) for c in OPERATOR_COLUMNS}
        if len(parts) == 1:
            return parts[0]
        return {c: _concat([p[c] for p in parts]) for c in OPERATOR_COLUMNS}


def _result_frame(r: dict[str, np.ndarray], agg_function: str, window_ms: int) -> dict[str, np.ndarray]:
    n = len(r["ts_ms"])
    return {
        "kind": np.full(n, KIND_RESULT, dtype=object),
        "application": r["application"],
        "ts_ms": r["ts_ms"],
        "agg_function": np.full(n, agg_function, dtype=object),
        "agg_window_millis": np.full(n, window_ms, dtype=np.int64),
        "agg_value": r["agg_value"],
        "detector": r["detector"],
        "value_lower_limit": r["value_lower_limit"],
        "value_upper_limit": r["value_upper_limit"],
        "anomaly_probability": r["anomaly_probability"],
        "is_anomaly": r["is_anomaly"].astype(bool),
        "explanation": r["explanation"],
        **{column: np.full(n, None, dtype=object) for column in DEAD_LETTER_COLUMNS},
    }


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    if any(a.dtype == object for a in arrays):
        return np.concatenate([a.astype(object) for a in arrays])
    return np.concatenate(arrays)


def _dead_letter_frame(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n = len(columns["reason"])
    out = {c: columns[c] if c in columns else np.full(n, None, dtype=object) for c in OPERATOR_COLUMNS}
    out["kind"] = np.full(n, KIND_DEAD_LETTER, dtype=object)
    return out


def _incident_frame(columns: dict[str, np.ndarray], agg_function: str, window_ms: int) -> dict[str, np.ndarray]:
    """Incident transitions as operator rows: the record's JSON in ``detail``, its id as ``kafka_key``, its
    sequence number as ``src_offset`` (jobs/sinks.py routes them to the incidents topic and tables)."""
    n = len(columns["ts_ms"])
    out = {c: columns[c] if c in columns else np.full(n, None, dtype=object) for c in OPERATOR_COLUMNS}
    out["kind"] = np.full(n, KIND_INCIDENT, dtype=object)
    out["agg_function"] = np.full(n, agg_function, dtype=object)
    out["agg_window_millis"] = np.full(n, window_ms, dtype=np.int64)
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


# dead-letter categories, in the order a per-application step emits them for one application
_DETECTOR_ERROR, _CONFLICT, _DUPLICATE, _LATE = range(4)


@dataclass
class _Step:
    """What one call of :func:`step_bucket` works with."""

    state: BucketState
    settings: StepSettings
    watermark_ms: int
    length: int  # window length: 1 ms for none
    names: np.ndarray  # the bucket's application names as an object array (for output columns)
    dead: list[dict[str, np.ndarray]] = field(default_factory=list)


def final_watermark(events: dict[str, np.ndarray], watermark_ms: int, allowed_lateness_ms: int) -> int:
    """The event time up to which the bucket's windows are final once ``events`` are counted.

    Spark's next watermark is the largest event time it has seen, over every
    bucket, minus ``allowed_lateness_ms``: at least this bucket's largest one
    minus the same. An event that arrives later for a window ending at or before
    that is late whatever happens, so such a window can be scored in this batch,
    not one batch later when Spark's watermark catches up. The results and dead
    letters are the same (tests/test_stateful_step.py); they leave a batch earlier.

    >>> final_watermark({"ts_ms": np.array([5_000, 9_000])}, 1_000, 2_000)
    7000
    >>> final_watermark(empty_events(), 1_000, 2_000)
    1000
    """
    if not len(events["ts_ms"]):
        return watermark_ms
    return max(watermark_ms, int(events["ts_ms"].max()) - allowed_lateness_ms)


def step_bucket(
    state: BucketState, events: dict[str, np.ndarray], watermark_ms: int, settings: StepSettings
) -> Outputs:
    """One micro-batch (or timer) of one bucket: updates ``state`` in place, returns what to emit.

    ``events`` holds :data:`EVENT_COLUMNS` in any order. Every application
    with events, and every application due at ``watermark_ms``, is stepped --
    all of them together, as arrays.
    """
    out = Outputs()
    agg_function = settings.agg_function
    state._ensure_tables(agg_function)
    if "detail" in events:  # incident feedback rides with the bucket's events (jobs/source.py)
        events, feedback = _split_feedback(events)
        if feedback is not None and settings.incidents is not None:
            _apply_feedback(state, settings, feedback, int(watermark_ms), out)
    # names -> the bucket's application indices, hashing each distinct name once
    # (new applications are added in order of first appearance)
    codes = np.zeros(0, dtype=np.int64)
    if len(events["application"]):
        local, distinct = pd.factorize(events["application"], sort=False)
        codes = state.add_all(distinct.tolist())[local]
    # Events arrive in shuffle order, which may differ on replay: sorting by
    # application, event time, then source position makes results deterministic.
    topics = pd.factorize(events["src_topic"], sort=True)[0] if len(codes) else codes  # codes in name order
    order = np.lexsort((events["src_offset"], events["src_partition"], topics, events["ts_ms"], codes))
    codes = codes[order]
    events = {name: events[name][order] for name in EVENT_COLUMNS}
    wm = int(watermark_ms)
    touched = state.due <= wm
    touched[codes] = True
    if not touched.any():
        return out
    step = _Step(
        state, settings, wm, windows.window_length(agg_function, settings.window_ms),
        np.array(state.names, dtype=object),
    )
    # Close what the watermark has passed *before* adding: an event whose
    # window ends at or before the watermark is late whether or not an earlier
    # step happened to close that window already.
    state.closed_until[touched] = np.maximum(state.closed_until[touched], wm)
    closed = _close_windows(step)
    scored = _score(step, *closed, out) if closed is not None else None
    tracks = _track_incidents(step, scored, out) if settings.incidents is not None else None
    if len(codes):
        _add_events(step, codes, events)
    _finish(step, touched, out)
    if tracks is not None and settings.incidents is not None:
        _incident_due(state, tracks, settings.incidents, settings.window_ms)
    return out


# -- incidents -----------------------------------------------------------------------
def _split_feedback(events: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """(metric events, feedback events or None): feedback is what carries an incident id in ``detail``."""
    is_feedback = pd.notna(events["detail"])
    if not is_feedback.any():
        return events, None
    metrics = {name: events[name][~is_feedback] for name in EVENT_COLUMNS}
    feedback = {name: column[is_feedback] for name, column in events.items()}
    return metrics, feedback


def _apply_feedback(
    state: BucketState, settings: StepSettings, feedback: dict[str, np.ndarray], watermark_ms: int, out: Outputs
) -> None:
    """Feedback in source order (partition, offset): resolve, record, reset detectors (new_normal), or refuse."""
    assert settings.incidents is not None
    order = np.lexsort((feedback["src_offset"], feedback["src_partition"]))
    fb = {name: column[order] for name, column in feedback.items()}
    items = [
        Feedback(a, i, LABELS[int(v)], int(t))
        for a, i, v, t in zip(fb["application"].tolist(), fb["detail"].tolist(), fb["value"].tolist(),
                              fb["ts_ms"].tolist(), strict=True)
    ]
    tracks = state.incidents(settings.incidents)
    result = process(tracks, settings.incidents, StreamKey(settings.agg_function, settings.window_ms), None,
                     watermark_ms, feedback=items)
    for application in result.reset_applications:  # new_normal: its detectors start over
        i = state.index.get(application)
        if i is not None:
            for blobs in state.detectors.values():
                blobs[i] = b""
    out.add_incidents(result.records, result.event_ms)
    for k, _reason, detail in result.rejected:
        item = items[k]
        raw = json.dumps({"application": item.application, "incident_id": item.incident_id, "label": item.label,
                          "ts": iso_ms(item.ts_ms)}, separators=(",", ":")).encode()
        out.add_dead_letters(
            {
                "application": np.array([item.application], dtype=object),
                "ts_ms": np.array([item.ts_ms], dtype=np.int64),
                "reason": np.array(["unknown_incident"], dtype=object),
                "detail": np.array([detail], dtype=object),
                "raw": np.array([raw], dtype=object),
                "kafka_key": np.array([item.application.encode()], dtype=object),
                "src_topic": fb["src_topic"][k : k + 1],
                "src_partition": fb["src_partition"][k : k + 1],
                "src_offset": fb["src_offset"][k : k + 1],
            }
        )


def _track_incidents(step: _Step, scored: Scored | None, out: Outputs) -> IncidentState | None:
    """The scored windows through the incident state machine; skipped while the bucket has no incident history
    and no window is anomalous (the common case)."""
    settings, state = step.settings, step.state
    assert settings.incidents is not None
    if state.incident_state is None and not state.incident_blob and (scored is None or not scored.is_anomaly.any()):
        return None
    tracks = state.incidents(settings.incidents)
    result = process(tracks, settings.incidents, StreamKey(settings.agg_function, settings.window_ms), scored,
                     step.watermark_ms)
    out.add_incidents(result.records, result.event_ms)
    return tracks


def _incident_due(state: BucketState, tracks: IncidentState, settings: IncidentSettings, window_ms: int) -> None:
    """An application with an open incident is due when it would turn no_data, so the bucket's timer fires then."""
    for application, deadline in next_deadline(tracks, settings, window_ms).items():
        i = state.index.get(application)
        if i is not None and deadline < state.due[i]:
            state.due[i] = deadline


def _close_windows(step: _Step) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Close every open window whose end its application's ``closed_until`` has reached.

    Returns the closed points (application index, window start, aggregated
    value), sorted by application, then event time; None if nothing closed.
    """
    state, fn, length = step.state, step.settings.agg_function, step.length
    agg = aggregations.get(fn)
    w = state.windows
    done = w["start"] + length <= state.closed_until[w["app"]]
    if not done.any():
        return None
    d = _take(w, done)
    state.windows = _take(w, ~done)
    if not agg.raw and len(state.seen["app"]):
        seen = state.seen
        still_open = (
            windows.window_starts(seen["ts"], fn, step.settings.window_ms) + length
            > state.closed_until[seen["app"]]
        )
        state.seen = _take(seen, still_open)
    if fn == "none":
        order = np.lexsort((d["ts"], d["app"]))
        return d["app"][order], d["ts"][order], d["value"][order]
    if agg.reduce is not None:
        order = np.lexsort((d["value"], d["start"], d["app"]))
        app, start, values = d["app"][order], d["start"][order], d["value"][order]
        first = np.flatnonzero(_group_starts(app, start))
        sizes = np.diff(np.append(first, len(values)))
        out_values = np.empty(len(first))
        # windows of equal size as the rows of one matrix, reduced in one call
        for size in np.unique(sizes).tolist():
            which = np.flatnonzero(sizes == size)
            out_values[which] = agg.reduce(values[first[which][:, None] + np.arange(size)])
        return app[first], start[first], out_values
    assert agg.finish is not None
    return d["app"], d["start"], np.asarray(agg.finish(d), dtype=np.float64)


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """For rows sorted by ``keys``: true where a new group of equal keys begins."""
    n = len(keys[0])
    new = np.ones(n, dtype=bool)
    if n > 1:
        new[1:] = np.logical_or.reduce([k[1:] != k[:-1] for k in keys])
    return new


def _score(step: _Step, app: np.ndarray, ts: np.ndarray, values: np.ndarray, out: Outputs) -> Scored | None:
    """Feed the closed windows to every detector, all applications at once; isolate failures to their points.

    With the incident layer on, returns the scored windows for it (sorted by application, detector, ts).
    """
    incidents = step.settings.incidents
    if incidents is not None and incidents.freezes:
        frozen = maintenance_mask(incidents, step.state.names, app, ts, freezing_only=True)
        if frozen.any():
            _frozen(step, app[frozen], ts[frozen], values[frozen], out)
            app, ts, values = app[~frozen], ts[~frozen], values[~frozen]
            if not len(app):
                return None
    apps, first = np.unique(app, return_index=True)
    offsets = np.append(first, len(app))
    app_list = apps.tolist()
    parts: list[tuple[int, np.ndarray, BatchResult]] = []  # (detector index, point positions, results)
    for d, (label, cls, params) in enumerate(step.settings.detectors):
        blobs = step.state.detector_blobs(label)
        try:
            new_blobs, result = cls.update_many([blobs[i] or None for i in app_list], ts, values, offsets, **params)
            if len(new_blobs) != len(app_list) or len(result) != len(ts):
                raise ValueError(f"{label}: update_many returned {len(new_blobs)} states, {len(result)} results")
        except Exception:
            # one application at a time, as a per-application operator would
            for k, i in enumerate(app_list):
                _score_one(step, d, i, offsets[k], offsets[k + 1], ts, values, parts)
            continue
        for i, blob in zip(app_list, new_blobs, strict=True):
            blobs[i] = blob
        parts.append((d, np.arange(len(ts)), result))
    if not parts:
        return None
    positions = np.concatenate([p for _, p, _ in parts])
    detector = np.concatenate([np.full(len(p), d) for d, p, _ in parts])
    result = concat_results([r for _, _, r in parts])
    # per application, detector after detector, points in event-time order
    order = np.lexsort((positions, detector, app[positions]))
    positions = positions[order]
    labels = np.array([label for label, _, _ in step.settings.detectors], dtype=object)
    out.add_results(
        {
            "application": step.names[app[positions]],
            "ts_ms": ts[positions],
            "agg_value": values[positions],
            "detector": labels[detector[order]],
            "value_lower_limit": result.value_lower_limit[order],
            "value_upper_limit": result.value_upper_limit[order],
            "anomaly_probability": result.anomaly_probability[order],
            "is_anomaly": result.is_anomaly[order],
            "explanation": np.asarray(result.explanation, dtype=object)[order],
        }
    )
    if incidents is None:
        return None
    return Scored(
        step.state.names, labels.tolist(), app[positions], detector[order], ts[positions], values[positions],
        result.value_lower_limit[order], result.value_upper_limit[order], result.anomaly_probability[order],
        result.is_anomaly[order], np.asarray(result.explanation, dtype=object)[order],
    )


MAINTENANCE_EXPLANATION = '{"kind":"maintenance"}'


def _frozen(step: _Step, app: np.ndarray, ts: np.ndarray, values: np.ndarray, out: Outputs) -> None:
    """Points inside a ``freeze_model`` maintenance window: the detectors do not see them (they keep what they
    learned before); each gets a result per detector with probability 0, no band and the explanation
    ``{"kind":"maintenance"}``, so the table still has one row per point."""
    n, labels = len(ts), [label for label, _, _ in step.settings.detectors]
    out.add_results(
        {
            "application": np.tile(step.names[app], len(labels)),
            "ts_ms": np.tile(ts, len(labels)),
            "agg_value": np.tile(values, len(labels)),
            "detector": np.repeat(np.array(labels, dtype=object), n),
            "value_lower_limit": np.full(n * len(labels), np.nan),
            "value_upper_limit": np.full(n * len(labels), np.nan),
            "anomaly_probability": np.zeros(n * len(labels)),
            "is_anomaly": np.zeros(n * len(labels), dtype=bool),
            "explanation": np.full(n * len(labels), MAINTENANCE_EXPLANATION, dtype=object),
        }
    )


def _score_one(
    step: _Step, d: int, i: int, a: int, b: int, ts: np.ndarray, values: np.ndarray,
    parts: list[tuple[int, np.ndarray, BatchResult]],
) -> None:
    """Application ``i``'s points a:b with detector ``d``; a failing point is dead-lettered and
    leaves the detector as it was before that point, the others are scored."""
    label, cls, params = step.settings.detectors[d]
    blobs = step.state.detector_blobs(label)
    blob = blobs[i] or None
    try:
        detector = _restore(cls, params, blob)
        result = detector.update_batch(ts[a:b], values[a:b])
        blobs[i] = detector.to_state()
        parts.append((d, np.arange(a, b), result))
        return
    except Exception:
        pass
    for p in range(a, b):
        try:
            detector = _restore(cls, params, blob)
            result = detector.update_batch(ts[p : p + 1], values[p : p + 1])
            blob = detector.to_state()
            parts.append((d, np.array([p]), result))
        except Exception as err:
            step.dead.append(
                {
                    "_app": np.array([i]),
                    "_cat": np.array([_DETECTOR_ERROR]),
                    "_sub": np.array([d]),
                    "_seq": np.array([p]),
                    "application": step.names[[i]],
                    "ts_ms": ts[p : p + 1],
                    "agg_value": values[p : p + 1],
                    "detector": np.array([label], dtype=object),
                    "reason": np.array(["detector_error"], dtype=object),
                    "detail": np.array([f"{label}: {type(err).__name__}: {err}"[:2000]], dtype=object),
                }
            )
    if blob is not None:
        blobs[i] = blob


def _restore(cls: type[Detector], params: dict[str, Any], blob: bytes | None) -> Any:
    """The application's detector: fresh before its first point, else rebuilt from its state blob."""
    return cls(**params) if blob is None else cls.from_state(blob, **params)


def _first_in_group(
    old_keys: tuple[np.ndarray, ...], new_keys: tuple[np.ndarray, ...], old_values: np.ndarray, new_values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each new row: is it the first of its key (old rows come first, then new rows in order), and the
    value of that first row."""
    n_old = len(old_keys[0])
    keys = [np.concatenate([o, n]) for o, n in zip(old_keys, new_keys, strict=True)]
    values = np.concatenate([old_values, new_values])
    # old before new, then arrival order, within equal keys
    sequence = np.arange(len(values))
    order = np.lexsort((sequence, *reversed(keys)))
    starts = _group_starts(*(k[order] for k in keys))
    first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    mine = rank[n_old:]
    return starts[mine], values[order][first][mine]


def _add_events(step: _Step, codes: np.ndarray, events: dict[str, np.ndarray]) -> None:
    """Repeats, late events and the counting of the rest, for every application's events at once."""
    state, settings, length = step.state, step.settings, step.length
    fn, window_ms = settings.agg_function, settings.window_ms
    raw = aggregations.get(fn).raw
    ts = events["ts_ms"].astype(np.int64, copy=False)
    values = events["value"].astype(np.float64, copy=False)
    starts = windows.window_starts(ts, fn, window_ms)
    on_time = starts + length > state.closed_until[codes]
    with_events = np.zeros(len(state), dtype=bool)
    with_events[codes] = True
    dropped = np.zeros(len(ts), dtype=bool)
    if fn == "none":
        # a point is keyed by its ts: one event per instant, whatever `deduplicate` says;
        # the first at an instant that is still open (an earlier batch's, or this batch's first) is kept
        w = _take(state.windows, with_events[state.windows["app"]])
        first, kept = _first_in_group((w["app"], w["ts"]), (codes, ts), w["value"], values)
        repeat = ~first & on_time
        same = values == kept
        duplicate, conflict = repeat & same, repeat & ~same
        if conflict.any():
            _conflicts(step, codes, events, conflict, kept)
        dropped = duplicate | conflict
    elif settings.deduplicate:
        # (application, ts, value) triples; -0.0 and 0.0 compare equal, in sorting as in grouping
        seen = state.windows if raw else state.seen
        seen = _take(seen, with_events[seen["app"]])
        first, _ = _first_in_group((seen["app"], seen["ts"], seen["value"]), (codes, ts, values), seen["value"], values)
        duplicate = ~first & on_time
        if not raw:
            counted = on_time & ~duplicate
            state.seen = _by_app(_cat(state.seen, {"app": codes[counted], "ts": ts[counted], "value": values[counted]}))
        dropped = duplicate
    else:
        duplicate = dropped
    if duplicate.any():
        step.dead.append(_refused(step, codes, events, np.flatnonzero(duplicate), _DUPLICATE, "duplicate",
                                  DUPLICATE_DETAIL))
    late = ~on_time
    if late.any():
        _late(step, codes, events, late)
    accepted = np.flatnonzero(on_time & ~dropped)
    if not len(accepted):
        return
    a_app, a_ts, a_values, a_starts = codes[accepted], ts[accepted], values[accepted], starts[accepted]
    np.maximum.at(state.last_event, a_app, a_ts)
    if raw:
        new = {"app": a_app, "start": a_starts, "ts": a_ts, "value": a_values}
        state.windows = _by_app(_cat(state.windows, new))
        return
    _merge_partials(state, a_app, a_starts, a_values)


def _merge_partials(state: BucketState, a_app: np.ndarray, a_starts: np.ndarray, a_values: np.ndarray) -> None:
    """Merge accepted events into the open windows' partial aggregates of the applications that got any.

    Per (application, window): the old partials first, then the events in
    arrival order -- the same operations, in the same order, as a
    per-application merge.
    """
    added = np.zeros(len(state), dtype=bool)
    added[a_app] = True
    w = state.windows
    mine = added[w["app"]]
    old, rest = _take(w, mine), _take(w, ~mine)
    n_old = len(old["app"])
    all_app, all_start = np.concatenate([old["app"], a_app]), np.concatenate([old["start"], a_starts])
    order = np.lexsort((all_start, all_app))
    group_starts = _group_starts(all_app[order], all_start[order])
    group = np.empty(len(order), dtype=np.int64)
    group[order] = np.cumsum(group_starts) - 1
    n = int(group_starts.sum())
    old_idx, new_idx = group[:n_old], group[n_old:]
    first = order[group_starts]
    merged = {"app": all_app[first], "start": all_start[first]}
    for p in aggregations.PARTIALS:
        column: np.ndarray = np.full(n, p.identity, dtype=p.dtype)
        p.merge.at(column, old_idx, old[p.name])
        p.merge.at(column, new_idx, p.of_event(a_values))
        merged[p.name] = column
    both = _cat(rest, merged)
    state.windows = _take(both, np.lexsort((both["start"], both["app"])))


def _by_app(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows sorted by application, stable (within one: the order they had)."""
    return _take(table, np.argsort(table["app"], kind="stable"))


def _conflicts(step: _Step, codes: np.ndarray, events: dict[str, np.ndarray], conflict: np.ndarray,
               kept: np.ndarray) -> None:
    # rare: application by application, grouped by the value that was kept
    for i in np.unique(codes[conflict]).tolist():
        a, b = np.searchsorted(codes, i, "left"), np.searchsorted(codes, i, "right")
        mine, kept_mine = conflict[a:b], kept[a:b]
        for rank, kept_value in enumerate(np.unique(kept_mine[mine]).tolist()):
            which = a + np.flatnonzero(mine & (kept_mine == kept_value))
            detail = (
                "another value was already accepted for this application and ts: "
                f"{float(kept_value)!r} (the first by topic, partition, offset)"
            )
            step.dead.append(_refused(step, codes, events, which, _CONFLICT, "conflicting_value", detail, rank))


def _late(step: _Step, codes: np.ndarray, events: dict[str, np.ndarray], late: np.ndarray) -> None:
    which = np.flatnonzero(late)
    closed = step.state.closed_until[codes[which]]
    details = {
        c: f"event time is behind the watermark: its window was closed at {iso_ms(c)}" for c in set(closed.tolist())
    }
    detail = np.array([details[c] for c in closed.tolist()], dtype=object)
    step.dead.append(_refused(step, codes, events, which, _LATE, "late", detail))


def _refused(
    step: _Step, codes: np.ndarray, events: dict[str, np.ndarray], which: np.ndarray, category: int, reason: str,
    detail: str | np.ndarray, sub: int = 0,
) -> dict[str, np.ndarray]:
    """Dead letters for valid events that are not counted (late, duplicate, conflicting_value).

    Valid events carry no raw bytes through the job, so the value is re-encoded
    as canonical JSON; the source position goes to the headers as for rejects.
    """
    ts_ms, values = events["ts_ms"][which], events["value"][which]
    applications = step.names[codes[which]]
    raw = [
        json.dumps({"application": a, "value": float(v), "ts": iso_ms(int(t))}, separators=(",", ":")).encode()
        for a, t, v in zip(applications.tolist(), ts_ms.tolist(), values.tolist(), strict=True)
    ]
    n = len(which)
    return {
        "_app": codes[which],
        "_cat": np.full(n, category),
        "_sub": np.full(n, sub),
        "_seq": which,
        "application": applications,
        "ts_ms": ts_ms,
        "agg_value": values,
        "reason": np.full(n, reason, dtype=object),
        "detail": detail if isinstance(detail, np.ndarray) else np.full(n, detail, dtype=object),
        "raw": np.array(raw, dtype=object),
        "kafka_key": np.array([a.encode() for a in applications.tolist()], dtype=object),
        "src_topic": events["src_topic"][which],
        "src_partition": events["src_partition"][which],
        "src_offset": events["src_offset"][which],
    }


def _finish(step: _Step, touched: np.ndarray, out: Outputs) -> None:
    """Dead letters in per-application order, next due times, eviction of the idle."""
    state, settings = step.state, step.settings
    if step.dead:
        keys = ("_app", "_cat", "_sub", "_seq")
        columns = sorted({c for part in step.dead for c in part} - set(keys))
        parts = [{c: p.get(c, np.full(len(p["_app"]), None, dtype=object)) for c in (*keys, *columns)}
                 for p in step.dead]
        merged = {c: _concat([p[c] for p in parts]) for c in (*keys, *columns)}
        # per application: detector errors, conflicts (by kept value), duplicates, late; each in event order
        order = np.lexsort(tuple(merged[k].astype(np.int64) for k in reversed(keys)))
        out.add_dead_letters({c: merged[c][order] for c in columns})
    w = state.windows
    n = len(state)
    has_windows = np.zeros(n, dtype=bool)
    has_windows[w["app"]] = True
    next_close = np.full(n, _INT64_MAX, dtype=np.int64)
    np.minimum.at(next_close, w["app"], w["start"])
    due = state.last_event + settings.idle_timeout_ms
    due[has_windows] = next_close[has_windows] + step.length
    state.due[touched] = due[touched]
    idle_before = step.watermark_ms - settings.idle_timeout_ms  # idle: no event after this
    if idle_before >= _INT64_MIN:
        state.drop(touched & ~has_windows & (state.last_event <= idle_before))

