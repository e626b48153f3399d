"""Small numeric helpers shared by the Gaussian-style detectors (no scipy, no Spark).

* :func:`two_sided_quantile` - the ``z`` with ``P(|Z| <= z) = p`` for a standard normal,
  found by bisection on :func:`math.erfc` (accurate to the last bits, no table);
* :func:`two_sided_probability` - ``P(|Z| <= z) = erf(z / sqrt 2) = 2*Phi(z) - 1``;
* :func:`gaussian_score` - turns (value, centre, scale) into a consistent
  :class:`~detectors.base.AnomalyResult`, safe for any finite input including
  values near ``±1.8e308`` (differences that would overflow are taken on halves and
  bounds are clipped to the largest finite float).

>>> round(two_sided_quantile(0.95), 6)
1.959964
>>> round(two_sided_probability(1.959964), 6)
0.95
>>> r = gaussian_score(10.0, 0.0, 1.0, two_sided_quantile(0.9999), 0.9999)
>>> r.is_anomaly, r.anomaly_probability == 1.0
(True, True)
"""

from __future__ import annotations

import math
import sys

from detectors.base import AnomalyResult

SQRT2 = math.sqrt(2.0)
FLOAT_MAX = sys.float_info.max


def two_sided_quantile(p: float) -> float:
    """``z >= 0`` such that ``P(|Z| <= z) = p`` for ``Z ~ N(0, 1)``, for ``0 < p < 1``.

    Bisection on ``erfc`` rather than a rational approximation: it is only run once
    per detector instance, and working on the upper tail ``q = 1 - p`` (exact for
    ``p > 0.5``) keeps full precision for thresholds like ``0.9999999``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {p!r}")
    q = 1.0 - p
    lo, hi = 0.0, 40.0  # erfc(40) underflows to 0, so the root is always inside
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):  # interval is down to adjacent floats
            break
        if math.erfc(mid) > q:
            lo = mid
        else:
            hi = mid
    return hi * SQRT2


def two_sided_probability(z: float) -> float:
    """``P(|Z| <= z) = 2*Phi(z) - 1`` for ``z >= 0`` (``inf`` gives exactly 1.0)."""
    return math.erf(z / SQRT2)


def _clip(x: float) -> float:
    # A band edge beyond the float range means "no limit on this side"; report the
    # largest finite float instead of inf so downstream sinks (JSON, JDBC) accept it.
    return max(-FLOAT_MAX, min(FLOAT_MAX, x))


def gaussian_score(
    x: float, center: float, scale: float, z_threshold: float, threshold: float, factor: float = 1.0
) -> AnomalyResult:
    """Score ``x`` against a normal band ``center ± z_threshold * scale``.

    ``center``/``scale`` may be given in a domain scaled by ``factor`` (a power of two,
    so scaling is exact) that callers use to keep intermediate differences finite;
    bounds are reported in the original domain. ``scale`` must be > 0 and finite.

    The band is authoritative: ``is_anomaly`` is "``x`` strictly outside the band",
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
    return AnomalyResult(lower, upper, prob, anomalous)
