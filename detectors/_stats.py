"""Small numeric helpers shared by the Gaussian-style detectors (no scipy, no Spark).

The anomaly probability scale
-----------------------------
A normal tail probability ``t`` is reported as ``p = 1 - t`` while that is an
honest float64 number, and on a documented *compressed* scale beyond, so that
the score keeps ordering points by surprise instead of saturating at 1.0 (plain
``2*Phi(z) - 1`` rounds to exactly 1.0 for every ``z > 8.3``, and NAB's threshold
optimiser then sees thousands of ties). With the *graded tail*

    q(t) = t                                          for t >= floor
    q(t) = floor / (1 + ln(1 + ln(floor / t)))        for t <  floor

the reported probability is ``p = 1 - q(t)``. Properties:

* for ``t >= floor`` (``floor = EXACT_TAIL = 1e-9``, i.e. up to 6.1 sigma two-sided)
  ``p`` *is* the calibrated probability ``P(|Z| <= z)``; thresholds up to
  ``1 - 1e-9`` keep their usual meaning (the default 0.9999 is 3.89 sigma);
* ``q`` is continuous with a continuous first derivative at ``t = floor`` and
  strictly decreasing in ``z`` for all ``z``; ``t`` is never formed below
  ``floor``: ``ln t`` comes from an asymptotic expansion of ``ln erfc``, so it
  works up to ``z = 1.8e308`` without underflow;
* ``q >= floor / 1420`` for every finite ``z``, so ``p <= 1 - 7e-13 < 1``: the top
  end is graded (``z = 10`` gives ``1 - 2.2e-10``, ``z = 1e3`` ``1 - 7.1e-11``,
  ``z = 1e12`` ``1 - 1.8e-11``), with float64 resolution to tell ``z`` apart to
  ~4e-5 relative at ``z ~ 1e6`` and ~3 % at ``z ~ 1e150``;
* a threshold ``p*`` above ``1 - floor`` is read on the same scale: it stands for
  the ``z`` with ``1 - q = p*`` (:func:`two_sided_quantile` inverts ``q`` exactly);
  thresholds no finite ``z`` reaches (``p* > 1 - 7e-13``) mean "never".

Why ``ln ln``: ``-ln t ~ z^2 / 2``, so one logarithm leaves a quantity spanning
30 decades over the finite ``z``; two bring it to ``[0, 1420]``, which the float64
numbers between ``1 - 1e-9`` and 1 (about 9e6 of them) can resolve.

Functions:

* :func:`graded_tail` - ``q(c * erfc(x))`` for any finite ``x`` (``c = 1``: two-sided
  tail of ``z = x * sqrt 2``; ``c = 1/2``: one-sided);
* :func:`two_sided_quantile` - the ``z`` with ``1 - q(P(|Z| > z)) = p``, by bisection
  over float64 bit patterns (exact to the last bit, no table);
* :func:`two_sided_probability` - ``1 - q(P(|Z| > z))``;
* :func:`gaussian_scores` - the same for arrays, bit for bit (for ``update_batch``);
* :func:`gaussian_score` - turns (value, centre, scale) into a consistent
  :class:`~detectors.base.AnomalyResult`, safe for any finite input including
  values near ``±1.8e308`` (differences that would overflow are taken on halves and
  bounds are clipped to the largest finite float).

>>> round(two_sided_quantile(0.95), 6), round(two_sided_quantile(0.9999), 4)
(1.959964, 3.8906)
>>> round(two_sided_probability(1.959964), 6)
0.95
>>> [two_sided_probability(z) < 1.0 for z in (9.0, 40.0, 1e300)]
[True, True, True]
>>> two_sided_probability(40.0) < two_sided_probability(41.0)
True
>>> r = gaussian_score(10.0, 0.0, 1.0, two_sided_quantile(0.9999), 0.9999)
>>> r.is_anomaly, 0.9999 < r.anomaly_probability < 1.0
(True, True)
"""

from __future__ import annotations

import functools
import math
import struct
import sys

import numpy as np

from detectors.base import AnomalyResult, BatchResult
from detectors.explain import band_explanation
from detectors.params import Param

SQRT2 = math.sqrt(2.0)
FLOAT_MAX = sys.float_info.max

# The threshold parameter of the band detectors (EMA, Robust): one definition, one meaning.
TAIL_THRESHOLD_PARAM = Param(
    "threshold",
    float,
    0.9999,
    "two-sided normal probability P(|Z| <= z) at or above which a point is anomalous "
    "(0.9999: 3.89 sigma; above 1 - 1e-9 on the graded scale of detectors._stats)",
    minimum=0.5,
    maximum=1.0,
    exclusive_minimum=True,
    exclusive_maximum=True,
)
EXACT_TAIL = 1e-9
"""Tail probabilities at or above this are reported exactly (``p = 1 - t``); below, compressed."""

_HALF_LOG_PI = 0.5 * math.log(math.pi)
_ASYMPTOTIC_FROM = 26.0  # erfc(x) stays a normal float up to ~26.5; beyond, ln erfc by expansion


def _log_series(x: float) -> float:
    """``ln S(x)`` for ``erfc(x) = exp(-x^2) / (x sqrt(pi)) * S(x)``, ``x >= 26``.

    ``S = sum_k (-1)^k (2k-1)!! / (2x^2)^k``; at ``x = 26`` the terms fall below
    1e-17 after 8 of them (the series is asymptotic, but its smallest term there
    is ~1e-290), and fewer are needed for larger ``x``.
    """
    y = 0.5 / x / x
    term, total, k = 1.0, 0.0, 1
    while True:
        term *= -(2 * k - 1) * y
        total += term
        if abs(term) < 1e-18:
            return math.log1p(total)
        k += 1


def graded_tail(x: float, c: float = 1.0, floor: float = EXACT_TAIL) -> float:
    """The graded tail ``q(t)`` of ``t = c * erfc(x)`` (module docstring), for any finite ``x``.

    ``c`` in ``(0, 1]``. Returns ``t`` itself while ``t >= floor``; below, the
    compressed ``floor / (1 + ln(1 + ln(floor / t)))``, computed from ``ln t``
    without ever forming ``t`` or ``x^2`` (no underflow, no overflow, ``x`` up to
    1.8e308). Non-increasing in ``x`` and always ``> 0``.
    """
    t = c * math.erfc(x)
    if t >= floor:
        return t
    log_floor = math.log(floor)
    if x < _ASYMPTOTIC_FROM:
        # t is a normal float here (>= c * 5e-296): its log is accurate.
        u = math.log1p(log_floor - math.log(t))
    else:
        # 1 + ln(floor/t) = x^2 + [1 + ln floor - ln c + ln x + ln sqrt(pi) - ln S(x)],
        # so u = 2 ln x + log1p([...] / x^2); dividing twice keeps 1/x^2 from overflowing.
        rest = 1.0 + log_floor - math.log(c) + math.log(x) + _HALF_LOG_PI - _log_series(x)
        u = 2.0 * math.log(x) + math.log1p(rest / x / x)
    return floor / (1.0 + u)


def _two_sided_graded(z: float) -> float:
    return graded_tail(min(z, FLOAT_MAX) / SQRT2)


@functools.lru_cache(maxsize=64)
def two_sided_quantile(p: float) -> float:
    """``z >= 0`` with ``1 - q(P(|Z| > z)) = p`` for ``Z ~ N(0, 1)``, ``0 < p < 1``.

    For ``p <= 1 - EXACT_TAIL`` this is the usual two-sided normal quantile
    (``P(|Z| <= z) = p``). Returns the smallest float ``z`` whose graded tail is
    ``<= 1 - p`` (found by bisection over the bit patterns of non-negative floats,
    whose integer order is their numeric order: 64 steps to adjacent floats), or
    ``inf`` when no finite ``z`` gets there (``p > 1 - 7e-13``). Working on the
    tail ``1 - p`` (exact for ``p > 0.5``) keeps full precision near 1. Cached:
    the streaming job rebuilds a detector per application and micro-batch, and
    the 64-step bisection was a third of that.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p!r}")
    q = 1.0 - p
    if _two_sided_graded(FLOAT_MAX) > q:
        return math.inf
    lo, hi = 0, _bits(FLOAT_MAX)  # invariant: tail(lo) > q (or lo == 0), tail(hi) <= q
    if _two_sided_graded(0.0) <= q:
        return 0.0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _two_sided_graded(_float(mid)) > q:
            lo = mid
        else:
            hi = mid
    return _float(hi)


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<q", bits))[0]


def two_sided_probability(z: float) -> float:
    """``1 - q(P(|Z| > z))`` for ``z >= 0``: ``2*Phi(z) - 1`` up to 6.1 sigma, graded beyond, always < 1.

    ``z = inf`` is treated as the largest float.
    """
    return 1.0 - _two_sided_graded(z)


def _clip(x: float) -> float:
    # A band edge beyond the float range means "no limit on this side"; report the
    # largest finite float instead of inf so downstream sinks (JSON, JDBC) accept it.
    return max(-FLOAT_MAX, min(FLOAT_MAX, x))


def gaussian_score(
    x: float, center: float, scale: float, z_threshold: float, threshold: float, factor: float = 1.0,
    by: str | None = None,
) -> AnomalyResult:
    """Score ``x`` against a normal band ``center ± z_threshold * scale``.

    ``center``/``scale`` may be given in a domain scaled by ``factor`` (a power of two,
    so scaling is exact) that callers use to keep intermediate differences finite;
    bounds are reported in the original domain. ``scale`` must be > 0 and finite.
    ``z_threshold`` may be ``inf`` (a threshold no finite ``z`` reaches: no band).
    With ``by`` (the detector's name) an anomaly gets an explanation (spike / dip, ``z``
    as sigma, the band as expected; :mod:`detectors.explain`).

    The probability is :func:`two_sided_probability` of ``|x - center| / scale``
    (an overflowing ratio counts as the largest float, so it stays below 1). The
    band is authoritative: ``is_anomaly`` is "``x`` strictly outside the band",
    and the probability is nudged by at most rounding error at the band edge so that
    ``is_anomaly == (anomaly_probability >= threshold)`` holds exactly.
    """
    xs = x * factor
    diff = xs - center
    # |xs - center| can exceed the float range only when both are huge with
    # opposite signs; halving both is exact there and keeps the ratio.
    z = abs(xs * 0.5 - center * 0.5) / (scale * 0.5) if math.isinf(diff) else abs(diff) / scale
    prob = two_sided_probability(z)
    half_width = z_threshold * scale
    lower = _clip((center - half_width) / factor)
    upper = _clip((center + half_width) / factor)
    anomalous = x < lower or x > upper
    if anomalous and prob < threshold:
        prob = threshold
    elif not anomalous and prob >= threshold:
        prob = math.nextafter(threshold, 0.0)
    why = band_explanation(x, lower, upper, z, by) if anomalous and by else None
    return AnomalyResult(lower, upper, prob, anomalous, why)


def gaussian_scores(
    x: np.ndarray, center: np.ndarray, scale: np.ndarray, z_threshold: float, threshold: float,
    by: str | None = None,
) -> BatchResult:
    """:func:`gaussian_score` (``factor = 1``) over arrays: the same floating-point steps, so the same bits.

    Only the tail probability stays a per-element ``math.erfc`` (numpy has no
    erfc); everything else is vectorised.
    """
    x, center, scale = (np.asarray(a, dtype=np.float64) for a in (x, center, scale))
    with np.errstate(over="ignore", invalid="ignore"):
        diff = x - center
        z = np.abs(diff) / scale
        overflowed = np.isinf(diff)
        if overflowed.any():
            z[overflowed] = np.abs(x[overflowed] * 0.5 - center[overflowed] * 0.5) / (scale[overflowed] * 0.5)
        half_width = z_threshold * scale
        lower = np.clip(center - half_width, -FLOAT_MAX, FLOAT_MAX)
        upper = np.clip(center + half_width, -FLOAT_MAX, FLOAT_MAX)
    erfc_arg = np.minimum(z, FLOAT_MAX) / SQRT2
    tail = np.array([math.erfc(v) for v in erfc_arg.tolist()], dtype=np.float64)
    for i in np.flatnonzero(tail < EXACT_TAIL).tolist():  # beyond 6.1 sigma: the graded scale
        tail[i] = graded_tail(float(erfc_arg[i]))
    prob = 1.0 - tail
    anomalous = (x < lower) | (x > upper)
    prob = np.where(anomalous & (prob < threshold), threshold, prob)
    prob = np.where(~anomalous & (prob >= threshold), math.nextafter(threshold, 0.0), prob)
    why = np.full(len(x), None, dtype=object)
    if by:
        for i in np.flatnonzero(anomalous).tolist():
            why[i] = band_explanation(float(x[i]), float(lower[i]), float(upper[i]), float(z[i]), by)
    return BatchResult(lower, upper, prob, anomalous, why)
