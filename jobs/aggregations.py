"""The aggregation functions, declared once: what an open window keeps and how it closes.

Config validation (jobs/config.py), the bucket's state tables and the window
closing of the step (jobs/stateful_step.py), and the tests' lists of functions
all read :data:`AGGREGATIONS`; adding a function is one entry here (and its
expected values in tests/test_windows.py).

A function is one of two kinds:

* **raw** -- an open window keeps every event's value, and closing it reduces
  them with ``reduce``, which takes a matrix of windows of equal size (one
  window per row, its values sorted ascending) and returns one value per row.
  The step closes all the windows of one size with one call; on a single row
  it takes the same steps as on that window alone, so the result has the same
  bits however windows are grouped. ``none`` is raw and not reduced: every
  event is its own point.
* **partial** -- an open window keeps one row of :data:`PARTIALS` (count, sum,
  min, max), each merged with its own ufunc (an event contributes
  ``of_event(value)``), and closing it computes the value from them with
  ``finish``. A window is never larger than its partials, whatever its number
  of events. Partials are merged in arrival order, so a ``sum`` or ``avg``
  depends on how events were split across micro-batches no more than float
  addition must.

``stddev`` is the population standard deviation (divisor n, Spark's
``stddev_pop``), so a window of one event has a spread of 0, not NaN. It is a
raw function: two passes over the window's values (mean, then squared
deviations) keep the spread exact where a running sum of squares loses it for
large values close together (latencies of 1e9 ms +- 1 ms).

>>> AGGREGATIONS["avg"].finish({"count": np.array([2]), "sum": np.array([3.0])}).tolist()
[1.5]
>>> AGGREGATIONS["percentile50"].reduce(np.array([[1.0, 2.0, 4.0], [8.0, 8.0, 16.0]])).tolist()
[2.0, 8.0]
>>> AGGREGATIONS["stddev"].reduce(np.array([[1.0, 3.0]])).tolist()
[1.0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np


@dataclass(frozen=True)
class Partial:
    """One partial aggregate kept per open window of a partial function."""

    name: str
    dtype: type
    identity: float  # the value of a window without events
    merge: np.ufunc  # combines two partials, or a partial and an event's contribution (``merge.at``)
    of_event: Callable[[np.ndarray], np.ndarray]  # each event's contribution


def _ones(values: np.ndarray) -> np.ndarray:
    return np.ones(len(values), dtype=np.int64)


def _same(values: np.ndarray) -> np.ndarray:
    return values


# The columns of an open window's row, in the bucket state's order. Every
# partial function keeps all of them: one table layout for all of them.
PARTIALS = (
    Partial("count", np.int64, 0, np.add, _ones),
    Partial("sum", np.float64, 0.0, np.add, _same),
    Partial("min", np.float64, np.inf, np.minimum, _same),
    Partial("max", np.float64, -np.inf, np.maximum, _same),
)

Finish = Callable[[Mapping[str, np.ndarray]], np.ndarray]
Reduce = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Aggregation:
    """One aggregation function: ``raw`` ones set ``reduce`` (None for ``none``), partial ones ``finish``."""

    name: str
    raw: bool
    doc: str
    reduce: Reduce | None = None
    finish: Finish | None = None


def _percentile(q: float, rows: np.ndarray) -> np.ndarray:
    # exact, linear interpolation between closest ranks: Spark's ``percentile``
    return np.percentile(rows, q, axis=1, method="linear")


def _stddev(rows: np.ndarray) -> np.ndarray:
    return np.std(rows, axis=1)


def _avg(p: Mapping[str, np.ndarray]) -> np.ndarray:
    return p["sum"] / p["count"]


def _count(p: Mapping[str, np.ndarray]) -> np.ndarray:
    return p["count"].astype(np.float64)


def _column(name: str) -> Finish:
    return lambda p: p[name]


def _raw(name: str, reduce: Reduce | None, doc: str) -> Aggregation:
    return Aggregation(name, raw=True, doc=doc, reduce=reduce)


def _partial(name: str, finish: Finish, doc: str) -> Aggregation:
    return Aggregation(name, raw=False, doc=doc, finish=finish)


AGGREGATIONS: dict[str, Aggregation] = {
    a.name: a
    for a in (
        _raw("none", None, "every event is its own point"),
        _partial("sum", _column("sum"), "sum of the values"),
        _partial("avg", _avg, "mean of the values"),
        _partial("count", _count, "number of events"),
        _partial("min", _column("min"), "smallest value"),
        _partial("max", _column("max"), "largest value"),
        *(
            _raw(f"percentile{q}", partial(_percentile, float(q)), f"{q}th percentile, linear interpolation")
            for q in (50, 75, 95, 99)
        ),
        _raw("stddev", _stddev, "population standard deviation of the values"),
    )
}
NAMES = tuple(AGGREGATIONS)
# functions that keep every raw value of an open window; the rest keep PARTIALS
RAW_VALUE_FUNCTIONS = frozenset(name for name, a in AGGREGATIONS.items() if a.raw)


def get(name: str) -> Aggregation:
    """The function called ``name``; config validation has already refused unknown names."""
    try:
        return AGGREGATIONS[name]
    except KeyError:
        raise ValueError(f"unknown agg_function {name!r} (one of {', '.join(NAMES)})") from None
