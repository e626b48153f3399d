"""The detector contract as a suite any detector author can run on their own class.

``check_detector(cls, params=None, series=None)`` runs every check of
:data:`CHECKS` on ``cls`` built with ``params`` (default: the schema's defaults)
over ``series`` (default: :func:`default_series`, 2,000 points with a daily-like
cycle, noise, spikes, a flat stretch and a level shift). A failed check raises
:class:`AssertionError` naming the check and the detector; each check is also a
function of its own (same arguments):

* :func:`check_state_round_trip`: ``to_state`` then ``from_state`` at several cut
  points (before the first point too) gives the same blob back, then the same
  results and the same state bytes as the uninterrupted run, bit for bit, for the
  next :data:`ROUND_TRIP_SPAN` points (to the end from one cut); ``to_state``
  changes nothing.
* :func:`check_batch_equals_update`: ``update_batch`` in uneven chunks (an empty
  one included) equals ``update`` point by point, bit for bit, and leaves the same
  state.
* :func:`check_update_many_equals_update_batch`: one ``update_many`` call over
  several series (fresh and restored from states cut at different points, of
  different lengths) gives, per series, what ``from_state`` + ``update_batch``
  + ``to_state`` give, bit for bit, results and new states; a NaN in one
  series makes the call raise (the job then isolates the failing points).
* :func:`check_bounded_state`: over two passes of the series the state stays within
  the bound the detector declares (:meth:`Detector.max_state_bytes`); without one,
  within :data:`DEFAULT_MAX_STATE_BYTES` and it levels off (the second pass adds
  at most half of the first pass's size).
* :func:`check_probabilities`: every ``anomaly_probability`` is a float in [0, 1)
  (strictly below 1 keeps the strongest alarms rankable; [0, 1] for a detector that
  declares ``probability_reaches_one``, i.e. CAD, bound to contextOSE's scores) and
  ``is_anomaly`` a bool.
* :func:`check_bounds`: ``value_lower_limit <= value_upper_limit`` wherever both are finite.
* :func:`check_param_schema`: every named ``__init__`` parameter is in the
  ``ParamSchema``; every parameter has a type, a default that validates and a
  description; a bad value of each parameter (wrong type, out of range, not a
  choice, null) and an unknown name raise :class:`ParamError` naming that field,
  from the schema and from the constructor.
* :func:`check_state_versioning`: a blob tagged with another detector's name, a
  newer state version or other parameters, garbage, a truncated blob and a blob
  without its fields are refused with :class:`StateError`.

A detector that passes (a made-up one: it expects each value within
``tolerance`` of the previous one):

>>> import math
>>> from detectors import AnomalyResult, Detector, Param, ParamSchema, StateError
>>> class LastValue(Detector):
...     name = "last_value"
...     params = ParamSchema((Param("tolerance", float, 5.0, "allowed change", minimum=0.0),))
...     def __init__(self, **params):
...         super().__init__(**params)
...         self._last = math.nan
...     def _update(self, ts_ms, value):
...         last, self._last = self._last, value
...         if math.isnan(last):
...             return AnomalyResult.warming_up()
...         tol = self.config["tolerance"]
...         jump = abs(value - last) > tol
...         return AnomalyResult(last - tol, last + tol, 0.9 if jump else 0.0, jump)
...     def _get_state(self):
...         return {"last": self._last}
...     def _set_state(self, state, version):
...         if "last" not in state:
...             raise StateError("last_value: stored state lacks field 'last'")
...         self._last = state["last"]
>>> check_detector(LastValue, {"tolerance": 3.0})   # quiet: every check passed

One that forgets what it learnt fails, and the error says which check and detector:

>>> class Forgetful(LastValue):
...     name = "forgetful"
...     def _set_state(self, state, version):
...         pass
>>> check_detector(Forgetful)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
AssertionError: check_state_round_trip failed for detector 'forgetful': ...
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from detectors.base import (
    DEFAULT_MAX_STATE_BYTES,
    AnomalyResult,
    BatchResult,
    Detector,
    StateError,
)
from detectors.params import Param, ParamError
from detectors.state import pack_state, unpack_state

__all__ = [
    "CHECKS",
    "DEFAULT_MAX_STATE_BYTES",
    "check_batch_equals_update",
    "check_bounded_state",
    "check_bounds",
    "check_detector",
    "check_param_schema",
    "check_probabilities",
    "check_state_round_trip",
    "check_state_versioning",
    "check_update_many_equals_update_batch",
    "default_series",
]

STEP_MS = 60_000  # timestamps of the default series: one point a minute

Check = Callable[..., None]


def default_series(n: int = 2000, seed: int = 0) -> np.ndarray:
    """A series that reaches every phase of the built-in detectors: a cycle (period 144) with
    noise, two spikes and a dip, a flat stretch and a level shift in the last quarter."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 50.0 + 10.0 * np.sin(2.0 * np.pi * t / 144.0) + rng.normal(0.0, 1.0, n)
    x[n // 5 : n // 5 + 20] = 50.0
    x[n // 3] += 40.0
    x[n // 3 + 200] += 25.0
    x[n // 2] -= 40.0
    x[3 * n // 4 :] += 15.0
    return x


class _Run:
    """What one check needs: the class, validated params, the series and its timestamps."""

    def __init__(self, cls: type[Detector], params: Mapping[str, Any] | None, series: Sequence[float] | None):
        self.cls = cls
        self.params = dict(params or {})
        values = default_series() if series is None else np.asarray(series, dtype=np.float64)
        if values.ndim != 1 or len(values) < 10:
            raise ValueError("series: need a one-dimensional sequence of at least 10 values")
        self.values = values
        self.ts = np.arange(len(values), dtype=np.int64) * STEP_MS

    def new(self) -> Detector:
        return self.cls(**self.params)

    def restore(self, blob: bytes) -> Detector:
        return self.cls.from_state(blob, **self.params)

    def feed(self, det: Detector, start: int = 0, stop: int | None = None, offset: int = 0) -> list[AnomalyResult]:
        stop = len(self.values) if stop is None else stop
        return [
            det.update(int(self.ts[i]) + offset, float(self.values[i])) for i in range(start, stop)
        ]


def _check(fn: Callable[[_Run], None]) -> Check:
    """Give a check its public signature and its failure message (check and detector named)."""

    def check(cls: type[Detector], params: Mapping[str, Any] | None = None,
              series: Sequence[float] | None = None) -> None:
        label = f"{fn.__name__} failed for detector {getattr(cls, 'name', cls.__name__)!r}"
        try:
            fn(_Run(cls, params, series))
        except AssertionError as err:
            raise AssertionError(f"{label}: {err}") from None
        except Exception as err:  # a detector raising where it should not is a failure of this check
            raise AssertionError(f"{label}: raised {type(err).__name__}: {err}") from err

    # the check's own name and docstring, with the public signature (functools.wraps would show _Run's)
    check.__name__, check.__qualname__, check.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    return check


# -- bit-for-bit comparison ---------------------------------------------------------------
def _bits(x: float | None) -> str | None:
    """A float's exact identity (-0.0 and 0.0 differ, every NaN is 'nan')."""
    return None if x is None else float(x).hex()


def _key(r: AnomalyResult) -> tuple:
    return (_bits(r.value_lower_limit), _bits(r.value_upper_limit), _bits(r.anomaly_probability),
            r.is_anomaly, r.explanation)


def _same_results(got: list[AnomalyResult], want: list[AnomalyResult], start: int, what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} results for {len(want)} points"
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert _key(a) == _key(b), f"{what}: point {start + i} gives {a}, expected {b}"


def _same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.uint64), b[~nan].view(np.uint64)))


# -- the checks ------------------------------------------------------------------------------
ROUND_TRIP_SPAN = 300
"""Points a restored detector is run and compared for after each cut (one cut runs to the end)."""


@_check
def check_state_round_trip(run: _Run) -> None:
    """to_state -> from_state at several cuts continues bit for bit (results and state bytes)."""
    n = len(run.values)
    reference = run.new()
    expected = run.feed(reference)
    final = reference.to_state()
    cuts = sorted({0, 1, 2, n // 10, n // 3 + 1, n // 2, 3 * n // 4 + 1, n - 1})
    long_cut = n // 3 + 1  # restored there, the detector runs to the end
    ends = {cut: n if cut == long_cut else min(cut + ROUND_TRIP_SPAN, n) for cut in cuts}
    # The same run again, with a state taken at every cut and at the end of every span.
    prober = run.new()
    marks = sorted({*cuts, *ends.values()} - {n})
    states: dict[int, bytes] = {}
    got: list[AnomalyResult] = []
    for mark, stop in itertools.pairwise([*marks, n]):
        states[mark] = prober.to_state()
        got += run.feed(prober, mark, stop)
    states[n] = prober.to_state()
    _same_results(got, expected, 0, "taking states (to_state) changed the results")
    assert states[n] == final, "taking states (to_state) changed the final state"
    for cut in cuts:
        blob, end = states[cut], ends[cut]
        resumed = run.restore(blob)
        assert resumed.to_state() == blob, f"cut at point {cut}: the restored detector's state differs from the blob"
        _same_results(run.feed(resumed, cut, end), expected[cut:end], cut, f"restored at point {cut}")
        assert resumed.to_state() == states[end], f"restored at point {cut}: the state at point {end} differs"


@_check
def check_batch_equals_update(run: _Run) -> None:
    """update_batch in uneven chunks equals update point by point, bit for bit, state included."""
    n = len(run.values)
    pointwise = run.new()
    expected = BatchResult.from_results(run.feed(pointwise))
    batched = run.new()
    edges = sorted({0, 1, 3, 37 % n, n // 2, n})
    chunks = [(0, 0), *itertools.pairwise(edges)]  # an empty batch first
    parts = []
    for a, b in chunks:
        part = batched.update_batch(run.ts[a:b], run.values[a:b])
        assert len(part) == b - a, f"update_batch of points {a}..{b - 1} gave {len(part)} results"
        parts.append(part)
    for column in ("value_lower_limit", "value_upper_limit", "anomaly_probability"):
        got = np.concatenate([np.asarray(getattr(p, column), dtype=np.float64) for p in parts])
        want = getattr(expected, column)
        if not _same_floats(got, want):
            i = next(i for i in range(n) if _bits(got[i]) != _bits(want[i]))
            raise AssertionError(f"{column} of point {i}: update_batch {got[i]!r}, update {want[i]!r}")
    flags = np.concatenate([np.asarray(p.is_anomaly, dtype=bool) for p in parts])
    assert np.array_equal(flags, expected.is_anomaly), "is_anomaly differs from update's"
    why = [w for p in parts for w in p.explanation]
    assert why == list(expected.explanation), "explanations differ from update's"
    assert batched.to_state() == pointwise.to_state(), "the state after update_batch differs from update's"


def _update_many_plan(n: int) -> list[tuple[int, int, int]]:
    """Series of a length-``n`` series: (first point, points learned before the call, points in it)."""
    return [
        (0, 0, n // 3),  # fresh
        (0, 1, 2),  # restored after one point
        (n // 7, n // 3, 1),  # one point after a long history
        (n // 5, 0, n // 4 + 1),  # fresh, from the middle
        (n // 2, n // 4, n - n // 2 - n // 4),  # restored, to the end
        (n // 10, n // 10 + 2, n // 10 + 1),
    ]


@_check
def check_update_many_equals_update_batch(run: _Run) -> None:
    """update_many over several series equals per-series from_state + update_batch + to_state, bit for bit."""
    blobs: list[bytes | None] = []
    ts, values, want = [], [], []
    for start, history, points in _update_many_plan(len(run.values)):
        cut, stop = start + history, start + history + points
        blob = None
        if history:
            det = run.new()
            det.update_batch(run.ts[start:cut], run.values[start:cut])
            blob = det.to_state()
        reference = run.new() if blob is None else run.restore(blob)
        want.append((reference.update_batch(run.ts[cut:stop], run.values[cut:stop]), reference.to_state()))
        blobs.append(blob)
        ts.append(run.ts[cut:stop])
        values.append(run.values[cut:stop])
    offsets = np.cumsum([0, *(len(v) for v in values)])
    all_ts, all_values = np.concatenate(ts), np.concatenate(values)
    states, got = run.cls.update_many(blobs, all_ts, all_values, offsets, **run.params)
    assert len(states) == len(blobs), f"update_many returned {len(states)} states for {len(blobs)} series"
    assert len(got) == len(all_values), f"update_many returned {len(got)} results for {len(all_values)} points"
    for k, ((expected, state), (a, b)) in enumerate(zip(want, itertools.pairwise(offsets.tolist()), strict=True)):
        for column in ("value_lower_limit", "value_upper_limit", "anomaly_probability"):
            mine, theirs = getattr(got, column)[a:b], getattr(expected, column)
            if not _same_floats(mine, theirs):
                i = next(i for i in range(b - a) if _bits(mine[i]) != _bits(theirs[i]))
                raise AssertionError(f"{column} of series {k}, point {i}: update_many {mine[i]!r}, "
                                     f"update_batch {theirs[i]!r}")
        flags, expected_flags = np.asarray(got.is_anomaly[a:b], dtype=bool), np.asarray(expected.is_anomaly, dtype=bool)
        assert np.array_equal(flags, expected_flags), f"is_anomaly of series {k} differs from update_batch's"
        assert list(got.explanation[a:b]) == list(expected.explanation), f"explanations of series {k} differ"
        assert states[k] == state, f"the state of series {k} after update_many differs from update_batch's"
    bad = all_values.copy()
    bad[offsets[2]] = np.nan
    try:
        run.cls.update_many(blobs, all_ts, bad, offsets, **run.params)
    except Exception:  # any exception: the job then scores series by series
        return
    raise AssertionError("a NaN in series 2 was accepted: update_many must raise, so the job isolates the point")


@_check
def check_bounded_state(run: _Run) -> None:
    """The state stays within max_state_bytes() (or the default bound, and levels off)."""
    det = run.new()
    declared = det.max_state_bytes()
    bound = DEFAULT_MAX_STATE_BYTES if declared is None else declared
    sizes = []
    n = len(run.values)
    for lap in range(2):  # the series twice, the second pass later in time
        run.feed(det, offset=lap * n * STEP_MS)
        sizes.append(len(det.to_state()))
        assert sizes[-1] <= bound, (
            f"state is {sizes[-1]:,} bytes after {(lap + 1) * n:,} points, above the "
            + ("declared bound" if declared is not None else "default bound (declare max_state_bytes)")
            + f" of {bound:,}"
        )
    if declared is None:
        assert sizes[1] <= sizes[0] * 3 // 2, (
            f"state grows with the stream: {sizes[0]:,} bytes after {n:,} points, {sizes[1]:,} after {2 * n:,}; "
            "bound it, or declare max_state_bytes"
        )


def _scored(run: _Run) -> list[AnomalyResult]:
    return run.feed(run.new())


@_check
def check_probabilities(run: _Run) -> None:
    """anomaly_probability is a float in [0, 1) ([0, 1] if probability_reaches_one); is_anomaly a bool."""
    closed = run.cls.probability_reaches_one
    for i, r in enumerate(_scored(run)):
        p = r.anomaly_probability
        assert isinstance(p, float), f"point {i}: anomaly_probability {p!r} is not a float"
        ok = 0.0 <= p <= 1.0 if closed else 0.0 <= p < 1.0
        assert ok, f"point {i}: anomaly_probability {p!r} is not in [0, 1{']' if closed else ')'}"
        assert isinstance(r.is_anomaly, bool), f"point {i}: is_anomaly {r.is_anomaly!r} is not a bool"


@_check
def check_bounds(run: _Run) -> None:
    """value_lower_limit <= value_upper_limit wherever both are finite."""
    for i, r in enumerate(_scored(run)):
        lo, hi = r.value_lower_limit, r.value_upper_limit
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
            assert lo <= hi, f"point {i}: value_lower_limit {lo!r} > value_upper_limit {hi!r}"


def _bad_values(p: Param) -> list[Any]:
    """Values ``p`` must refuse: the wrong type, beyond its range, not a choice, null."""
    wrong_type: Any = {"not": "a scalar"} if p.type is not dict else 42
    if p.type in (int, float):
        wrong_type = "not a number"
    elif p.type is bool:
        wrong_type = "maybe"
    bad = [wrong_type]
    if p.minimum is not None:
        bad.append(p.minimum if p.exclusive_minimum else p.minimum - 1)
    if p.maximum is not None:
        bad.append(p.maximum if p.exclusive_maximum else p.maximum + 1)
    if p.choices is not None and p.type is str:
        bad.append("".join(str(c) for c in p.choices) + "?")
    if not p.nullable:
        bad.append(None)
    return bad


def _refuses(fn: Callable[[], Any], field: str, what: str) -> None:
    try:
        fn()
    except ParamError as err:
        assert err.field == field, f"{what}: ParamError names field {err.field!r}, not {field!r}"
        return
    raise AssertionError(f"{what}: accepted (expected ParamError naming {field!r})")


@_check
def check_param_schema(run: _Run) -> None:
    """The ParamSchema is complete and documented; bad values raise ParamError naming the field."""
    cls, schema = run.cls, run.cls.params
    assert isinstance(getattr(cls, "name", None), str) and cls.name, "the class has no name"
    assert isinstance(cls.state_version, int) and cls.state_version >= 1, "state_version must be an int >= 1"
    for pname, par in inspect.signature(cls.__init__).parameters.items():
        if pname != "self" and par.kind not in (par.VAR_KEYWORD, par.VAR_POSITIONAL):
            assert pname in schema.names, f"__init__ parameter {pname!r} is not in the ParamSchema"
    for p in schema.params:
        assert isinstance(p.type, type), f"parameter {p.name!r} has no type"
        assert p.description.strip(), f"parameter {p.name!r} has no description"
        if p.default is None:
            assert p.nullable, f"parameter {p.name!r} defaults to null but is not nullable"
        else:
            try:
                p.coerce(p.default)
            except ParamError as err:
                raise AssertionError(f"parameter {p.name!r}: default {p.default!r} does not validate: {err}") from None
    defaults = schema.validate({})
    assert defaults == schema.defaults(), "validating no values does not give the defaults"
    for p in schema.params:
        for bad in _bad_values(p):
            what = f"parameter {p.name!r} = {bad!r}"
            values = {**run.params, p.name: bad}
            _refuses(functools.partial(schema.validate, values), p.name, what)
            _refuses(functools.partial(cls, **values), p.name, what + " (constructor)")
    unknown = "no_such_parameter_"
    _refuses(functools.partial(cls, **{**run.params, unknown: 1}), unknown, "an unknown parameter")


def _other_params(run: _Run, det: Detector) -> dict[str, Any] | None:
    """Valid parameters that differ from ``det``'s in one value, when one is easy to find."""
    for p in run.cls.params.params:
        current = det.config[p.name]
        if p.type is bool:
            candidates: list[Any] = [not current]
        elif p.type in (int, float) and current is not None:
            candidates = [current + 1, current * 2, current - 1, current / 2 if p.type is float else current // 2]
        elif p.choices is not None:
            candidates = [c for c in p.choices if c != current]
        else:
            continue
        for value in candidates:
            try:
                other = run.cls(**{**run.params, p.name: value})
            except (ParamError, ValueError, TypeError):
                continue
            if other.config != det.config:
                return {**run.params, p.name: value}
    return None


def _refused(make: Callable[[], Any], what: str) -> None:
    try:
        make()
    except StateError:
        return
    except Exception as err:
        raise AssertionError(f"{what}: raised {type(err).__name__} ({err}), not StateError") from None
    raise AssertionError(f"{what}: accepted (expected StateError)")


@_check
def check_state_versioning(run: _Run) -> None:
    """Foreign, newer, other-parameter, garbage, truncated and empty states raise StateError."""
    det = run.new()
    run.feed(det, 0, min(len(run.values), 300))
    blob = det.to_state()
    header, fields = unpack_state(blob, f"detector {run.cls.name!r}")
    assert header["name"] == run.cls.name, f"the state is tagged {header['name']!r}, not {run.cls.name!r}"
    assert header["version"] == run.cls.state_version, "the state is not tagged with state_version"
    other = run.cls.name + "_other"
    _refused(lambda: run.restore(pack_state(other, run.cls.state_version, det.config, fields)),
             "a state written by another detector")
    _refused(lambda: run.restore(pack_state(run.cls.name, run.cls.state_version + 1, det.config, fields)),
             "a state of a newer version")
    changed = _other_params(run, det)
    if changed is not None:
        _refused(lambda: run.cls.from_state(blob, **changed), f"a state built with other parameters ({changed})")
    _refused(lambda: run.restore(b"not a detector state"), "garbage")
    _refused(lambda: run.restore(blob[: len(blob) // 2]), "a truncated state")
    if fields:
        _refused(lambda: run.restore(pack_state(run.cls.name, run.cls.state_version, det.config, {})),
                 "a state without its fields")


CHECKS: tuple[Check, ...] = (
    check_param_schema,
    check_probabilities,
    check_bounds,
    check_batch_equals_update,
    check_update_many_equals_update_batch,
    check_state_round_trip,
    check_state_versioning,
    check_bounded_state,
)
"""Every check, in the order :func:`check_detector` runs them (cheap ones first)."""


def check_detector(cls: type[Detector], params: Mapping[str, Any] | None = None,
                   series: Sequence[float] | None = None) -> None:
    """Run every check of :data:`CHECKS` on ``cls``; the first failure raises AssertionError."""
    for check in CHECKS:
        check(cls, params, series)
