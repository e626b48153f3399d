"""The incident state machine: scored windows (and feedback) in, incident transitions out.

One *track* per (application, detector) holds at most one current incident::

    none ──anomaly (k of n)──► open ──severity rises / peak +margin──► open ("updated")
                                │  ▲
             m clean windows ───┘  └── anomaly within merge_gap of a clean resolution ("reopened";
                   ▼                    more than flapping_reopens reopens in flapping_window: "flapping")
                resolved ◄── feedback false_positive / expected / new_normal (muted until m clean windows)
    open ──no window for no_data_after (event time: the watermark passed last_seen + no_data_after)──► no_data
    open ──an anomaly max_duration after opening──► resolved ("split", resolution max_duration) + a new incident

Inside a maintenance window (:mod:`incidents.rules`) windows are ignored:
nothing opens, nothing counts as clean, no ``no_data``.

Every transition is a record (:data:`RECORD_FIELDS`) with the incident's
deterministic id (sha256 of application, detector, aggregation and the first
window's time) and a per-incident sequence number: replaying the same windows
from the same state gives the same records. A record of a cleanly resolved
incident carries ``reopen_until`` (resolved + the application's merge gap, event
time): until then an anomaly reopens it under the same id, and the notifier
keeps its alert firing (incidents/paging.py); null otherwise.

Cheap in the common case: the tracks are columnar arrays (:class:`IncidentState`),
and :func:`process` looks at a window in Python only when it is anomalous or its
track has an incident open (or muted); a bucket whose windows are all clean and
whose applications have no open incident costs a few numpy calls, whatever the
number of applications. The state is versioned and bounded: one row per track
with incident history, dropped ``retention_millis`` after its last activity.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import numpy as np

from detectors.state import StateError, pack_state, unpack_state
from incidents.rules import SEVERITIES, IncidentSettings, Maintenance, Rules

STATE_VERSION = 1
# track status
NONE, OPEN, FLAPPING, NO_DATA, RESOLVED = range(5)
STATES = ("none", "open", "flapping", "no_data", "resolved")
RESOLUTIONS = (None, "clean", "false_positive", "expected", "new_normal", "max_duration")
LABELS = ("false_positive", "expected", "true_positive", "new_normal")
FEEDBACK = (None, *LABELS)
TRANSITIONS = ("opened", "updated", "reopened", "flapping", "resolved", "no_data", "split", "feedback")
RECORD_FIELDS = (
    "incident_id", "seq", "transition", "state", "application", "detector", "agg_function", "agg_window_millis",
    "opened_at", "event_ts", "resolved_at", "severity", "peak_probability", "peak_value", "peak_ts",
    "value_lower_limit", "value_upper_limit", "explanation", "window_count", "resolution", "feedback",
    "reopen_until",
)
# on the topic only, not in the incident tables (an existing table would lack the column): what the
# notifier needs and the tables do not
TOPIC_ONLY_FIELDS = ("reopen_until",)
MAX_SCORE = 15.0  # -log10(1 - p) is capped: p = 1 - 1e-15 and above all count as the same peak
_INT_COLUMNS = ("status", "seq", "opened", "resolved", "last_anom", "clean", "last_seen", "window_count",
                "severity", "resolution", "feedback", "muted", "peak_ts")
_FLOAT_COLUMNS = ("peak_score", "peak_prob", "peak_value", "peak_lower", "peak_upper")
_TEXT_COLUMNS = ("app", "det", "incident_id", "peak_expl")
_ACTIVE = (OPEN, FLAPPING, NO_DATA)


def incident_id(application: str, detector: str, agg_function: str, window_ms: int, first_ms: int) -> str:
    """32 hex characters, the same for the same incident on every replay.

    >>> incident_id("checkout", "default", "avg", 300000, 0)
    '868d80d8e0c1881fc4f22ee6921b6345'
    """
    text = "\x1f".join((application, detector, agg_function, str(int(window_ms)), str(int(first_ms))))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def score_of(probability: float) -> float:
    """-log10(1 - p), capped at :data:`MAX_SCORE`: the peak measure (1.0 more = ten times rarer)."""
    rest = 1.0 - probability
    return MAX_SCORE if rest <= 10.0**-MAX_SCORE else min(MAX_SCORE, -math.log10(rest))


def severity_of(rules: Rules, probability: float, explanation: str | None) -> int:
    level = 2 if probability >= rules.critical_probability else 1 if probability >= rules.warning_probability else 0
    if explanation and level < 2:
        try:
            kind = json.loads(explanation).get("kind")
        except (ValueError, AttributeError):
            kind = None
        if kind in rules.escalate_kinds:
            level += 1
    return level


@dataclass(frozen=True)
class StreamKey:
    """What names a stream's incidents besides application and detector."""

    agg_function: str
    window_ms: int


@dataclass
class Scored:
    """A bucket's scored windows, sorted by (application, detector, ts): what :func:`process` reads."""

    names: Sequence[str]  # application of index i
    labels: Sequence[str]  # detector of index j
    app: np.ndarray  # int, per row
    det: np.ndarray  # int, per row
    ts_ms: np.ndarray
    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    probability: np.ndarray
    is_anomaly: np.ndarray
    explanation: np.ndarray  # object: str or None


@dataclass(frozen=True)
class Feedback:
    application: str
    incident_id: str
    label: str  # one of LABELS
    ts_ms: int


@dataclass
class Transitions:
    """What one :func:`process` call produced."""

    records: list[dict[str, Any]] = field(default_factory=list)
    event_ms: list[int] = field(default_factory=list)  # each record's event time, epoch ms
    reset_applications: list[str] = field(default_factory=list)  # new_normal: re-learn from now
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (feedback index, reason, detail)


class IncidentState:
    """The tracks of a bucket (or a backtest), columnar; one row per (application, detector) with history."""

    def __init__(self, columns: dict[str, Any], history_width: int = 0, reopen_width: int = 4) -> None:
        self.c = columns
        self.history_width = history_width
        self.reopen_width = reopen_width
        self._index: dict[tuple[str, str], int] | None = None

    @staticmethod
    def empty(history_width: int = 0, reopen_width: int = 4) -> IncidentState:
        columns: dict[str, Any] = {name: [] for name in _TEXT_COLUMNS}
        columns.update({name: np.zeros(0, dtype=np.int64) for name in _INT_COLUMNS})
        columns.update({name: np.zeros(0, dtype=np.float64) for name in _FLOAT_COLUMNS})
        columns["recent"] = np.zeros((0, history_width), dtype=np.int64)
        columns["reopens"] = np.zeros((0, reopen_width), dtype=np.int64)
        return IncidentState(columns, history_width, reopen_width)

    @staticmethod
    def for_settings(settings: IncidentSettings) -> IncidentState:
        return IncidentState.empty(settings.history_width, _reopen_width(settings))

    def __len__(self) -> int:
        return len(self.c["app"])

    def index(self) -> dict[tuple[str, str], int]:
        if self._index is None:
            self._index = {key: i for i, key in enumerate(zip(self.c["app"], self.c["det"], strict=True))}
        return self._index

    def add(self, application: str, detector: str) -> int:
        """A new track with no incident; its row."""
        i = len(self)
        self.c["app"].append(application)
        self.c["det"].append(detector)
        self.c["incident_id"].append("")
        self.c["peak_expl"].append("")
        for name in _INT_COLUMNS:
            self.c[name] = np.append(self.c[name], -1 if name in ("opened", "resolved", "last_anom") else 0)
        for name in _FLOAT_COLUMNS:
            self.c[name] = np.append(self.c[name], np.nan)
        self.c["recent"] = np.vstack([self.c["recent"], np.full((1, self.history_width), -1, dtype=np.int64)])
        self.c["reopens"] = np.vstack([self.c["reopens"], np.full((1, self.reopen_width), -1, dtype=np.int64)])
        self.c["last_seen"][i] = np.iinfo(np.int64).min
        self.index()[(application, detector)] = i
        return i

    def keep(self, rows: np.ndarray) -> None:
        """Keep only the tracks where ``rows`` is true."""
        if rows.all():
            return
        which = np.flatnonzero(rows)
        for name in _TEXT_COLUMNS:
            self.c[name] = [self.c[name][i] for i in which.tolist()]
        for name in (*_INT_COLUMNS, *_FLOAT_COLUMNS, "recent", "reopens"):
            self.c[name] = self.c[name][which]
        self._index = None

    def drop_applications(self, names: set[str]) -> None:
        """Forget the tracks of these applications (evicted from the bucket)."""
        if names and len(self):
            self.keep(np.array([a not in names for a in self.c["app"]], dtype=bool))

    def encode(self) -> bytes:
        fields: dict[str, Any] = {name: "\x00".join(self.c[name]) for name in _TEXT_COLUMNS}
        fields["n"] = len(self)
        fields.update((name, self.c[name]) for name in (*_INT_COLUMNS, *_FLOAT_COLUMNS, "recent", "reopens"))
        return pack_state("incident_state", STATE_VERSION, {}, fields)

    @staticmethod
    def decode(blob: bytes) -> IncidentState:
        header, fields = unpack_state(blob, "incident state")
        if header["name"] != "incident_state" or header["version"] != STATE_VERSION:
            raise StateError(f"unsupported incident state {header} (this version reads {STATE_VERSION})")
        n = int(fields["n"])
        columns: dict[str, Any] = {name: fields[name].split("\x00") if n else [] for name in _TEXT_COLUMNS}
        columns.update((name, fields[name]) for name in (*_INT_COLUMNS, *_FLOAT_COLUMNS, "recent", "reopens"))
        return IncidentState(columns, fields["recent"].shape[1], fields["reopens"].shape[1])

    def fit(self, settings: IncidentSettings) -> None:
        """Widen or narrow the per-track history to what ``settings`` need (a changed config)."""
        for name, width in (("recent", settings.history_width), ("reopens", _reopen_width(settings))):
            table = self.c[name]
            if table.shape[1] < width:
                pad = np.full((len(self), width - table.shape[1]), -1, dtype=np.int64)
                self.c[name] = np.hstack([pad, table])
            elif table.shape[1] > width:
                self.c[name] = table[:, table.shape[1] - width :]
        self.history_width, self.reopen_width = settings.history_width, _reopen_width(settings)


def _reopen_width(settings: IncidentSettings) -> int:
    return max([settings.rules.flapping_reopens, *[r.flapping_reopens for _, r in settings.overrides]]) + 1


@lru_cache(maxsize=65536)
def _windows_of(maintenance: tuple[Maintenance, ...], application: str) -> tuple[Maintenance, ...]:
    return tuple(m for m in maintenance if m.matches(application))


def maintenance_mask(
    settings: IncidentSettings, names: Sequence[str], app: np.ndarray, ts_ms: np.ndarray, freezing_only: bool = False
) -> np.ndarray:
    """Which rows (application index, event time) fall inside a maintenance window (``freeze_model`` ones only
    with ``freezing_only``); vectorised per application that has windows."""
    inside = np.zeros(len(ts_ms), dtype=bool)
    windows = tuple(m for m in settings.maintenance if m.freeze_model or not freezing_only)
    if not windows or not len(ts_ms):
        return inside
    for i in np.unique(app).tolist():
        mine = _windows_of(windows, names[i])
        if not mine:
            continue
        rows = np.flatnonzero(app == i)
        for window in mine:
            inside[rows] |= window.contains(ts_ms[rows])
    return inside


# -- the machine ---------------------------------------------------------------------
class _Track:
    """One track's values as Python scalars while its windows are processed."""

    status: int
    seq: int
    opened: int
    resolved: int
    last_anom: int
    clean: int
    last_seen: int
    window_count: int
    severity: int
    resolution: int
    feedback: int
    muted: int
    peak_ts: int
    peak_score: float
    peak_prob: float
    peak_value: float
    peak_lower: float
    peak_upper: float

    def __init__(self, state: IncidentState, i: int) -> None:
        c = state.c
        self.i = i
        self.app: str = c["app"][i]
        self.det: str = c["det"][i]
        self.incident_id: str = c["incident_id"][i]
        self.peak_expl: str = c["peak_expl"][i]
        for name in _INT_COLUMNS:
            setattr(self, name, int(c[name][i]))
        for name in _FLOAT_COLUMNS:
            setattr(self, name, float(c[name][i]))
        self.recent: list[int] = c["recent"][i].tolist()
        self.reopens: list[int] = c["reopens"][i].tolist()

    def store(self, state: IncidentState) -> None:
        c, i = state.c, self.i
        c["incident_id"][i], c["peak_expl"][i] = self.incident_id, self.peak_expl
        for name in (*_INT_COLUMNS, *_FLOAT_COLUMNS):
            c[name][i] = getattr(self, name)
        c["recent"][i] = self.recent
        c["reopens"][i] = self.reopens


@dataclass
class _Context:
    settings: IncidentSettings
    stream: StreamKey
    out: Transitions


def _emit(ctx: _Context, t: _Track, transition: str, event_ms: int) -> None:
    t.seq += 1
    # a clean resolution reopens under the same id until resolved + merge_gap (event time); the notifier
    # keeps the incident's alert firing that long (incidents/paging.py)
    reopenable = t.status == RESOLVED and t.resolution == 1
    reopen_until = iso(t.resolved + ctx.settings.rules_for(t.app).merge_gap_ms) if reopenable else None
    ctx.out.event_ms.append(int(event_ms))
    ctx.out.records.append(
        {
            "incident_id": t.incident_id,
            "seq": t.seq,
            "transition": transition,
            "state": STATES[t.status],
            "application": t.app,
            "detector": t.det,
            "agg_function": ctx.stream.agg_function,
            "agg_window_millis": int(ctx.stream.window_ms),
            "opened_at": iso(t.opened),
            "event_ts": iso(event_ms),
            "resolved_at": iso(t.resolved) if t.status == RESOLVED else None,
            "severity": SEVERITIES[t.severity],
            "peak_probability": float(t.peak_prob),
            "peak_value": float(t.peak_value),
            "peak_ts": iso(t.peak_ts),
            "value_lower_limit": _none_if_nan(t.peak_lower),
            "value_upper_limit": _none_if_nan(t.peak_upper),
            "explanation": t.peak_expl or None,
            "window_count": t.window_count,
            "resolution": RESOLUTIONS[t.resolution],
            "feedback": FEEDBACK[t.feedback],
            "reopen_until": reopen_until,
        }
    )


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _set_peak(t: _Track, row: tuple, score: float) -> None:
    ts, value, lower, upper, probability, _, explanation = row
    t.peak_score, t.peak_prob, t.peak_value, t.peak_ts = score, probability, value, ts
    t.peak_lower, t.peak_upper, t.peak_expl = lower, upper, explanation or ""


def _open(ctx: _Context, t: _Track, row: tuple, score: float, severity: int) -> None:
    ts = row[0]
    t.incident_id = incident_id(t.app, t.det, ctx.stream.agg_function, ctx.stream.window_ms, ts)
    t.seq, t.status, t.opened, t.resolved, t.last_anom, t.clean = 0, OPEN, ts, -1, ts, 0
    t.window_count, t.severity, t.resolution, t.feedback = 1, severity, 0, 0
    t.reopens = [-1] * len(t.reopens)
    _set_peak(t, row, score)
    _emit(ctx, t, "opened", ts)


def _anomaly(ctx: _Context, t: _Track, rules: Rules, row: tuple) -> None:
    ts, probability, explanation = row[0], row[4], row[6]
    score = score_of(probability)
    severity = severity_of(rules, probability, explanation)
    if t.muted:  # resolved by feedback: quiet until the application recovers
        t.clean = 0
        return
    if t.status in _ACTIVE:
        if ts - t.opened >= rules.max_duration_ms:
            t.status, t.resolution, t.resolved = RESOLVED, RESOLUTIONS.index("max_duration"), ts
            _emit(ctx, t, "split", ts)
            _open(ctx, t, row, score, severity)
            return
        t.window_count, t.last_anom, t.clean = t.window_count + 1, ts, 0
        rises = severity > t.severity or score >= t.peak_score + rules.update_margin
        if score > t.peak_score:
            _set_peak(t, row, score)
        if t.status == NO_DATA:
            t.status, rises = OPEN, True
        if rises:
            t.severity = max(t.severity, severity)
            _emit(ctx, t, "updated", ts)
        return
    if t.status == RESOLVED and t.resolution == 1 and ts - t.resolved <= rules.merge_gap_ms:
        t.reopens = [*t.reopens[1:], ts]
        recent = sum(1 for r in t.reopens if r >= 0 and ts - r < rules.flapping_window_ms)
        t.status = FLAPPING if recent > rules.flapping_reopens else OPEN
        t.resolved, t.resolution, t.last_anom, t.clean = -1, 0, ts, 0
        t.window_count += 1
        t.severity = max(t.severity, severity)
        if score > t.peak_score:
            _set_peak(t, row, score)
        _emit(ctx, t, "flapping" if t.status == FLAPPING else "reopened", ts)
        return
    # k of the last n windows (k - 1 earlier anomalous windows kept per track)
    horizon = ts - (rules.open_n - 1) * ctx.stream.window_ms
    earlier = sum(1 for r in t.recent if r >= horizon and r < ts)
    if earlier + 1 >= rules.open_k:
        t.recent = [-1] * len(t.recent)
        _open(ctx, t, row, score, severity)
    elif t.recent:
        t.recent = [*t.recent[1:], ts]


def _clean(ctx: _Context, t: _Track, rules: Rules, row: tuple) -> None:
    ts = row[0]
    needed = rules.resolve_windows(ctx.stream.window_ms)
    if t.muted:
        t.clean += 1
        if t.clean >= needed:
            t.muted, t.clean = 0, 0
        return
    if t.status not in _ACTIVE:
        return
    if t.status == NO_DATA:
        t.status = OPEN
        _emit(ctx, t, "updated", ts)
    t.clean += 1
    if t.status == FLAPPING:  # quiet for a whole flapping window, not just m windows
        needed = max(needed, math.ceil(rules.flapping_window_ms / max(ctx.stream.window_ms, 1)))
    if t.clean >= needed:
        t.status, t.resolution, t.resolved = RESOLVED, 1, ts
        _emit(ctx, t, "resolved", ts)


def _feedback(ctx: _Context, state: IncidentState, items: Sequence[Feedback]) -> None:
    for k, item in enumerate(items):
        rows = [i for i, (a, inc) in enumerate(zip(state.c["app"], state.c["incident_id"], strict=True))
                if a == item.application and inc == item.incident_id and inc]
        if not rows:
            known = item.application in state.c["app"]
            detail = (f"no incident {item.incident_id!r} of application {item.application!r}" if known
                      else f"no incident of application {item.application!r} is known")
            ctx.out.rejected.append((k, "unknown_incident", detail))
            continue
        t = _Track(state, rows[0])
        t.feedback = FEEDBACK.index(item.label)
        if item.label != "true_positive" and t.status in _ACTIVE:
            t.status, t.resolution, t.resolved = RESOLVED, RESOLUTIONS.index(item.label), item.ts_ms
            t.muted, t.clean = 1, 0
            _emit(ctx, t, "resolved", item.ts_ms)
        else:
            _emit(ctx, t, "feedback", item.ts_ms)
        if item.label == "new_normal":
            t.muted, t.clean = 1, 0
            ctx.out.reset_applications.append(item.application)
        t.store(state)


def process(
    state: IncidentState,
    settings: IncidentSettings,
    stream: StreamKey,
    scored: Scored | None,
    watermark_ms: int,
    feedback: Sequence[Feedback] = (),
) -> Transitions:
    """Apply ``feedback`` (in order), then the scored windows, then the no-data rule at ``watermark_ms``.

    Updates ``state`` in place; returns the transitions (records in the order
    they happened per track), the applications whose detectors must re-learn
    (``new_normal``), and the rejected feedback.
    """
    ctx = _Context(settings, stream, Transitions())
    if feedback:
        _feedback(ctx, state, feedback)
    if scored is not None and len(scored.ts_ms):
        _windows(ctx, state, scored)
    _no_data(ctx, state, watermark_ms)
    _forget(state, settings, watermark_ms)
    return ctx.out


def _hot_rows(state: IncidentState, scored: Scored) -> np.ndarray:
    """Rows that need the state machine: anomalous ones, and every row of a track with an incident open."""
    hot = np.asarray(scored.is_anomaly, dtype=bool).copy()
    busy = np.flatnonzero(np.isin(state.c["status"], _ACTIVE) | (state.c["muted"] == 1)) if len(state) else None
    if busy is not None and len(busy):
        hot |= _rows_of_tracks(state, scored, busy)
    if not hot.any():
        return hot
    # after an anomaly opens an incident, the rest of its track's rows matter too
    app, det = scored.app, scored.det
    group = np.cumsum(np.r_[True, (app[1:] != app[:-1]) | (det[1:] != det[:-1])]) - 1
    position = np.arange(len(hot))
    first = np.full(int(group[-1]) + 1, len(hot))
    np.minimum.at(first, group[hot], position[hot])
    return position >= first[group]


def _rows_of_tracks(state: IncidentState, scored: Scored, busy: np.ndarray) -> np.ndarray:
    hot = np.zeros(len(scored.ts_ms), dtype=bool)
    app_of = {name: i for i, name in enumerate(scored.names)}
    det_of = {name: j for j, name in enumerate(scored.labels)}
    width = len(scored.labels)
    codes = [app_of[state.c["app"][i]] * width + det_of[state.c["det"][i]] for i in busy.tolist()
             if state.c["app"][i] in app_of and state.c["det"][i] in det_of]
    if codes:
        hot |= np.isin(scored.app * width + scored.det, np.array(codes, dtype=np.int64))
    return hot


def _windows(ctx: _Context, state: IncidentState, scored: Scored) -> None:
    hot = np.flatnonzero(_hot_rows(state, scored))
    if not len(hot):
        return
    maintenance = maintenance_mask(ctx.settings, scored.names, scored.app[hot], scored.ts_ms[hot])
    app, det = scored.app[hot], scored.det[hot]
    starts = np.flatnonzero(np.r_[True, (app[1:] != app[:-1]) | (det[1:] != det[:-1])])
    ends = np.r_[starts[1:], len(hot)]
    columns = [scored.ts_ms, scored.value, scored.lower, scored.upper, scored.probability, scored.is_anomaly,
               scored.explanation]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        name, label = scored.names[int(app[a])], scored.labels[int(det[a])]
        i = state.index().get((name, label))
        if i is None:
            i = state.add(name, label)
        t = _Track(state, i)
        rules = ctx.settings.rules_for(name)
        rows = hot[a:b]
        picked = [column[rows].tolist() for column in columns]
        for k, row in enumerate(zip(*picked, strict=True)):
            t.last_seen = max(t.last_seen, int(row[0]))
            if maintenance[a + k]:
                continue
            row = (int(row[0]), float(row[1]), _nan(row[2]), _nan(row[3]), float(row[4]), bool(row[5]), row[6])
            if row[5]:
                _anomaly(ctx, t, rules, row)
            else:
                _clean(ctx, t, rules, row)
        t.store(state)


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _no_data(ctx: _Context, state: IncidentState, watermark_ms: int) -> None:
    status = state.c["status"] if len(state) else np.zeros(0, dtype=np.int64)
    live = np.flatnonzero((status == OPEN) | (status == FLAPPING))
    for i in live.tolist():
        t = _Track(state, i)
        rules = ctx.settings.rules_for(t.app)
        deadline = t.last_seen + rules.no_data_ms(ctx.stream.window_ms)
        if watermark_ms < deadline:
            continue
        windows = _windows_of(ctx.settings.maintenance, t.app)
        if any(w.contains(np.array([deadline]))[0] for w in windows):
            continue
        t.status = NO_DATA
        _emit(ctx, t, "no_data", deadline)
        t.store(state)


def _forget(state: IncidentState, settings: IncidentSettings, watermark_ms: int) -> None:
    """Drop tracks with nothing open, nothing muted and no activity for ``retention_ms``."""
    if not len(state):
        return
    c = state.c
    last = np.maximum.reduce([c["resolved"], c["last_anom"], c["last_seen"], c["recent"].max(axis=1, initial=-1)])
    idle = ~np.isin(c["status"], _ACTIVE) & (c["muted"] == 0) & (last + settings.retention_ms < watermark_ms)
    if idle.any():
        state.keep(~idle)


def next_deadline(state: IncidentState, settings: IncidentSettings, window_ms: int) -> dict[str, int]:
    """Per application with an open incident: the event time at which it turns ``no_data`` if nothing arrives."""
    due: dict[str, int] = {}
    if not len(state):
        return due
    for i in np.flatnonzero(np.isin(state.c["status"], (OPEN, FLAPPING))).tolist():
        app = state.c["app"][i]
        deadline = int(state.c["last_seen"][i]) + settings.rules_for(app).no_data_ms(window_ms)
        due[app] = min(due.get(app, deadline), deadline)
    return due
