"""Windowing of one application at a time: the window half of the step's oracle.

tests/oracles/stateful_step_oracle.py steps applications one at a time over these
functions; the vectorised step (jobs/stateful_step.py) must give the same
results (tests/test_step_vectorised.py). Raw-value functions keep their open
events' values in ``sums`` (the field's name from the partial-aggregate
functions); closing a window reads the aggregation registry
(jobs/aggregations.py), partial merges keep its four partials by name. Not used
by the job; the semantics are jobs/windows.py's.

>>> state = WindowState.empty("avg")
>>> state, late = add_events(state, np.array([1_000, 4_000, 11_000]), np.array([1.0, 3.0, 10.0]), "avg", 10_000)
>>> late.tolist()
[False, False, False]
>>> state, starts, values = close_windows(state, 10_000, "avg", 10_000)
>>> starts.tolist(), values.tolist()
([0], [2.0])
>>> state, late = add_events(state, np.array([9_000]), np.array([5.0]), "avg", 10_000)
>>> late.tolist()  # window [0, 10000) was already scored
[True]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from jobs.aggregations import RAW_VALUE_FUNCTIONS, get
from jobs.windows import window_length, window_starts

__all__ = [
    "RAW_VALUE_FUNCTIONS",
    "WindowState",
    "add_events",
    "close_windows",
    "find_duplicates",
    "find_same_instant",
    "next_close_time",
    "window_length",
    "window_starts",
]

_EMPTY_I = np.zeros(0, dtype=np.int64)
_EMPTY_F = np.zeros(0, dtype=np.float64)


@dataclass
class WindowState:
    """Open windows of one key.

    Raw-value functions keep (``starts`` = event window start, ``ts``, ``values``)
    per event; the others keep one row of partial aggregates per open window and,
    when duplicates are looked for, the (``seen_ts``, ``seen_values``) of the
    events in those windows.
    """

    closed_until: int
    starts: np.ndarray
    ts: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    mins: np.ndarray
    maxs: np.ndarray
    seen_ts: np.ndarray = field(default_factory=lambda: _EMPTY_I)
    seen_values: np.ndarray = field(default_factory=lambda: _EMPTY_F)

    @staticmethod
    def empty(agg_function: str, closed_until: int = np.iinfo(np.int64).min) -> WindowState:
        return WindowState(closed_until, _EMPTY_I, _EMPTY_I, _EMPTY_I, _EMPTY_F, _EMPTY_F, _EMPTY_F)


def _event_keys(ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(ts, value) pairs as one complex number each: compared, sorted and np.isin-ed natively.

    Millisecond timestamps are exact in a float64 (up to 2**53 ms, year 287,396);
    -0.0 and 0.0 compare equal, as the same value should.
    """
    return ts.astype(np.float64) + 1j * values


def find_duplicates(
    state: WindowState, ts: np.ndarray, values: np.ndarray, agg_function: str, window_ms: int
) -> tuple[WindowState, np.ndarray]:
    """Mask of events that repeat an event already counted in an open window, or earlier in this batch.

    Call before :func:`add_events` with the same events (in the order that
    decides which copy counts: the first wins) and add only the others. The
    returned state remembers the counted events of non-raw functions; raw-value
    functions remember every event anyway.

    >>> state = WindowState.empty("sum")
    >>> state, dup = find_duplicates(state, np.array([1, 1, 2]), np.array([5.0, 5.0, 5.0]), "sum", 10)
    >>> dup.tolist()
    [False, True, False]
    >>> find_duplicates(state, np.array([2, 3]), np.array([5.0, 5.0]), "sum", 10)[1].tolist()
    [True, False]
    """
    ts = np.asarray(ts, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keys = _event_keys(ts, values)
    on_time = window_starts(ts, agg_function, window_ms) + window_length(agg_function, window_ms) > state.closed_until
    if agg_function in RAW_VALUE_FUNCTIONS:
        seen = _event_keys(state.ts, state.sums)
    else:
        seen = _event_keys(state.seen_ts, state.seen_values)
    duplicate = np.isin(keys, seen)
    repeated = np.ones(len(keys), dtype=bool)
    repeated[np.unique(keys, return_index=True)[1]] = False
    duplicate = (duplicate | repeated) & on_time
    if agg_function not in RAW_VALUE_FUNCTIONS:
        counted = on_time & ~duplicate
        state = replace(
            state,
            seen_ts=np.concatenate([state.seen_ts, ts[counted]]),
            seen_values=np.concatenate([state.seen_values, values[counted]]),
        )
    return state, duplicate


def find_same_instant(
    state: WindowState, ts: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``none``: events at an instant (ts) that already has an accepted point.

    A ``none`` point is keyed by its application and ts, so only one event per
    instant can become a result. Events must come sorted by (ts, source
    position): the first at an instant that is still open (in ``state`` from an
    earlier batch, or first in this batch) is kept; each later one is a
    *duplicate* when its value equals the kept value, else a *conflict*.
    Returns (duplicate mask, conflict mask, the kept value per event). Late
    events are neither: :func:`add_events` reports them.

    >>> state = WindowState.empty("none")
    >>> dup, conflict, kept = find_same_instant(state, np.array([5, 5, 5, 6]), np.array([1.0, 1.0, 2.0, 3.0]))
    >>> dup.tolist(), conflict.tolist(), kept.tolist()
    ([False, True, False, False], [False, False, True, False], [1.0, 1.0, 1.0, 3.0])
    """
    ts = np.asarray(ts, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    nothing = np.zeros(len(ts), dtype=bool)
    if len(state.ts) == 0 and not (ts[1:] == ts[:-1]).any():
        return nothing, nothing, values  # the common case: one event per instant, nothing open
    on_time = ts + 1 > state.closed_until
    _, first, inverse = np.unique(ts, return_index=True, return_inverse=True)
    kept = values[first][inverse]
    repeat = np.ones(len(ts), dtype=bool)
    repeat[first] = False
    if len(state.ts):
        # raw-value functions keep their open points' values in `sums`
        order = np.argsort(state.ts, kind="stable")
        open_ts, open_values = state.ts[order], state.sums[order]
        at = np.minimum(np.searchsorted(open_ts, ts), len(open_ts) - 1)
        seen = open_ts[at] == ts
        kept = np.where(seen, open_values[at], kept)
        repeat |= seen
    repeat &= on_time
    same = values == kept
    return repeat & same, repeat & ~same, kept


def add_events(
    state: WindowState, ts: np.ndarray, values: np.ndarray, agg_function: str, window_ms: int
) -> tuple[WindowState, np.ndarray]:
    """Add events in arrival order; returns the new state and a mask of late events."""
    ts = np.asarray(ts, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    starts = window_starts(ts, agg_function, window_ms)
    late = starts + window_length(agg_function, window_ms) <= state.closed_until
    keep = ~late
    ts, values, starts = ts[keep], values[keep], starts[keep]
    if len(ts) == 0:
        return state, late
    if agg_function in RAW_VALUE_FUNCTIONS:
        # values ride in `sums`; counts/mins/maxs stay empty for raw-value functions
        new = replace(
            state,
            starts=np.concatenate([state.starts, starts]),
            ts=np.concatenate([state.ts, ts]),
            sums=np.concatenate([state.sums, values]),
        )
        return new, late
    # Merge per-window partials of this batch into the open windows.
    all_starts = np.concatenate([state.starts, starts])
    uniq, inverse = np.unique(all_starts, return_inverse=True)
    n_old = len(state.starts)
    counts = np.zeros(len(uniq), dtype=np.int64)
    sums = np.zeros(len(uniq))
    mins = np.full(len(uniq), np.inf)
    maxs = np.full(len(uniq), -np.inf)
    old_idx, new_idx = inverse[:n_old], inverse[n_old:]
    counts[old_idx] += state.counts
    sums[old_idx] += state.sums
    np.minimum.at(mins, old_idx, state.mins)
    np.maximum.at(maxs, old_idx, state.maxs)
    np.add.at(counts, new_idx, 1)
    # Sum in arrival order, window by window, so the result does not depend on
    # how events were split across micro-batches more than float addition must.
    np.add.at(sums, new_idx, values)
    np.minimum.at(mins, new_idx, values)
    np.maximum.at(maxs, new_idx, values)
    return replace(state, starts=uniq, ts=_EMPTY_I, counts=counts, sums=sums, mins=mins, maxs=maxs), late


def close_windows(
    state: WindowState, watermark_ms: int, agg_function: str, window_ms: int
) -> tuple[WindowState, np.ndarray, np.ndarray]:
    """Close every window ending at or before the watermark.

    Returns the new state, the closed windows' starts (ascending: event-time
    order) and their aggregated values.
    """
    closed_until = max(state.closed_until, int(watermark_ms))
    length = window_length(agg_function, window_ms)
    done = state.starts + length <= closed_until
    if not done.any():
        return replace(state, closed_until=closed_until), _EMPTY_I, _EMPTY_F
    keep = ~done
    if agg_function == "none":
        order = np.argsort(state.ts[done], kind="stable")
        out_starts, out_values = state.ts[done][order], state.sums[done][order]
    elif get(agg_function).raw:
        # window by window, each window's values sorted ascending, as one row
        reduce = get(agg_function).reduce
        assert reduce is not None
        starts, values = state.starts[done], state.sums[done]
        order = np.lexsort((values, starts))
        starts, values = starts[order], values[order]
        out_starts, first = np.unique(starts, return_index=True)
        bounds = [*first[1:], len(values)]
        out_values = np.array([reduce(values[None, a:b])[0] for a, b in zip(first, bounds, strict=True)])
    else:
        out_starts = state.starts[done]  # np.unique kept them sorted
        partials = {"count": state.counts[done], "sum": state.sums[done], "min": state.mins[done],
                    "max": state.maxs[done]}
        finish = get(agg_function).finish
        assert finish is not None
        out_values = finish(partials)
    if agg_function in RAW_VALUE_FUNCTIONS:
        new = replace(
            state, closed_until=closed_until, starts=state.starts[keep], ts=state.ts[keep], sums=state.sums[keep]
        )
    else:
        still_open = window_starts(state.seen_ts, agg_function, window_ms) + length > closed_until
        new = replace(
            state,
            closed_until=closed_until,
            starts=state.starts[keep],
            counts=state.counts[keep],
            sums=state.sums[keep],
            mins=state.mins[keep],
            maxs=state.maxs[keep],
            seen_ts=state.seen_ts[still_open],
            seen_values=state.seen_values[still_open],
        )
    return new, out_starts.astype(np.int64), np.asarray(out_values, dtype=np.float64)


def next_close_time(state: WindowState, agg_function: str, window_ms: int) -> int | None:
    """The watermark at which the earliest open window closes, or None if none is open."""
    if len(state.starts) == 0:
        return None
    return int(state.starts.min()) + window_length(agg_function, window_ms)
