"""Exponentially weighted mean / standard deviation detector (``"ema"``).

Each point is scored against the exponentially weighted mean and standard
deviation of the points *before* it, then folded into them (West/Finch
incremental EW variance). The mean has the span ``window``; the spread (the EW
standard deviation of the one-step deviations ``x - mean``) has its own, longer
span ``spread_window``, so the band follows a level quickly while it remembers
how far the series has strayed over a longer stretch. The band is
``mean ± z * std`` where ``z`` is the standard-normal quantile for the two-sided
``threshold``; the anomaly probability is the two-sided normal probability
``2*Phi(|x - mean| / std) - 1`` up to ``1 - 1e-9`` (6.1 sigma) and a graded,
documented compression of the tail beyond (:mod:`detectors._stats`: strictly
increasing in ``|x - mean| / std``, always below 1.0, so far-out points stay
ordered by how far out they are). So ``is_anomaly``, ``anomaly_probability >=
threshold`` and "value outside the band" always agree, and the default
``threshold = 0.9999`` is a 3.89 sigma band.

>>> from detectors.ema import EMADetector
>>> det = EMADetector(window=20, warmup=5)
>>> det.update(0, 10.0)        # warming up: explicit, no bounds, no alarm, no explanation
AnomalyResult(value_lower_limit=None, value_upper_limit=None, anomaly_probability=0.0, is_anomaly=False, \
explanation=None)
>>> for i in range(1, 50):
...     r = det.update(i * 1000, 10.0 + (i % 3))
>>> r.is_anomaly, r.value_lower_limit < 11.0 < r.value_upper_limit
(False, True)
>>> det.update(50_000, 100.0).is_anomaly
True
>>> len(det.to_state()) < 200    # four numbers plus a small header
True

Details
-------
* ``alpha = 2 / (window + 1)`` for the mean, ``beta = 2 / (spread_window + 1)`` for
  the spread (the usual "span" convention). With ``spread_window == window`` this
  is the plain EW mean and variance (the detector before version 2).
* Spread floor: the std a point is scored with is at least ``PEAK_SHARE = 0.3``
  of the largest recent one-step deviation (that maximum decays by ``1 - beta``
  per point). On a spiky series a spike like the recent ones is then ~3.3 sigma,
  not a new alarm each time; a spike much larger than them still is. On normal
  noise the largest deviation over thousands of points is ~4 sigma, so the floor
  (~1.2 sigma) widens the band by ~20 % there.
* Defaults chosen by leave-one-folder-out cross-validation on the 31 shared NAB
  series (``bench/simple_cv.py``; a grid of window 30/100/300, spread_window
  window/1000/3000/10000, PEAK_SHARE 0/0.1/0.2/0.3): ``window = 300``,
  ``spread_window = 10000``, ``PEAK_SHARE = 0.3`` score 47.8 / 43.0 / 51.2
  in-sample (NAB standard / low-FP / low-FN) and 44.9 / 39.1 / 48.2 with the
  threshold cross-validated; window 100 with one span and no floor scores
  35.8 / 23.8 / 42.7 and 23.0 / 6.9 / 26.3. docs/detectors.md has the table.
* The first point initialises the mean; its weight then decays like every other
  point's, so (equal spans) the estimate is an exactly weighted mean/variance with
  weights ``(1-a)^(n-1), a(1-a)^(n-2), ..., a``. Early on those few points give a
  biased (too small) variance, which would flood the first minutes with alarms, so
  the variance is divided by ``1 - sum(w_i^2)`` (the spread's weights) (the unbiased estimator for
  reliability weights; exactly the sample variance for ``n = 2``). The sum of
  squared weights is tracked incrementally; in steady state the correction is
  ``1 / (1 - a/(2-a))``, about 1% for ``window = 100``.
* The standard deviation (not the variance) is stored and updated with
  :func:`math.hypot`, so values up to ``±1.8e308`` never overflow the state.
* Zero variance: the std used for scoring is at least
  ``max(REL_STD_FLOOR * |mean|, ABS_STD_FLOOR)`` (1e-9 relative, 1e-12 absolute).
  A constant series followed by the same constant has distance 0 and is never
  anomalous; followed by a value differing by more than ~4e-9 relative (or 4e-12
  absolute around 0, at the default threshold) it is. Rounding noise in an
  aggregated "constant" (~1e-16 relative) stays far below the floor.
* Warm-up: the first ``warmup`` points return :meth:`AnomalyResult.warming_up`.
* State (version 2): ``mean``, ``std``, ``w2``, ``peak`` (float64) and ``count``
  (int64): about 150 bytes whatever the stream length. Version 1 states (one span,
  no peak) are refused with a message (their parameters differ anyway).
* ``update_batch`` runs the (inherently sequential)
  mean/std recursion in a plain loop and scores all points at once with
  :func:`detectors._stats.gaussian_scores`: the same bits as ``update``, ~4x faster.
  ``update_many`` (many series, the streaming job's path) decodes and encodes the
  states in bulk and scores every series' points in one call: the same bits again.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from detectors._stats import FLOAT_MAX, TAIL_THRESHOLD_PARAM, gaussian_score, gaussian_scores, two_sided_quantile
from detectors.base import (
    AnomalyResult,
    BatchResult,
    Detector,
    NonFiniteValueError,
    StateError,
)
from detectors.params import Param, ParamSchema
from detectors.state import FixedStateLayout

SPREAD_WINDOW = 10_000  # default span of the spread; cross-validated on NAB (bench/simple_cv.py)


class EMADetector(Detector):
    """Exponentially weighted mean ± z·std band; see the module docstring."""

    name: ClassVar[str] = "ema"
    state_version: ClassVar[int] = 2
    params: ClassVar[ParamSchema] = ParamSchema(
        (
            Param("window", int, 300, "EMA span of the mean; alpha = 2 / (window + 1)", minimum=2),
            TAIL_THRESHOLD_PARAM,
            Param(
                "spread_window",
                int,
                SPREAD_WINDOW,
                "EMA span of the standard deviation of the one-step deviations (the spread "
                "remembers rarer excursions than the mean does)",
                minimum=2,
            ),
            Param("warmup", int, 10, "points learned before the first scored point", minimum=2),
        )
    )

    # The scoring std is at least PEAK_SHARE of the largest recent one-step deviation
    # (decaying with the spread's span): on a spiky series a spike like the last ones is
    # not a many-sigma surprise. Cross-validated on NAB (bench/simple_cv.py).
    PEAK_SHARE: ClassVar[float] = 0.3
    # Floors on the scoring std; class attributes so a subclass can retune them.
    REL_STD_FLOOR: ClassVar[float] = 1e-9
    ABS_STD_FLOOR: ClassVar[float] = 1e-12

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._alpha = 2.0 / (self.config["window"] + 1.0)
        self._beta = 2.0 / (self.config["spread_window"] + 1.0)  # weight of a new deviation in the spread
        self._spread_decay = 1.0 - self._beta
        self._sqrt_beta = math.sqrt(self._beta)
        self._sqrt_decay = math.sqrt(self._spread_decay)
        self._z = two_sided_quantile(self.config["threshold"])
        self._mean = 0.0
        self._std = 0.0  # biased (plain weighted) std; corrected when scoring
        self._w2 = 0.0  # sum of squared normalised weights
        self._peak = 0.0  # largest recent |one-step deviation|, decaying like the spread's weights
        self._count = 0

    # -- introspection (tests, debugging) ---------------------------------------
    @property
    def count(self) -> int:
        return self._count

    @property
    def mean(self) -> float:
        """Exponentially weighted mean of the points seen so far."""
        return self._mean

    @property
    def std(self) -> float:
        """Bias-corrected EW standard deviation (before the zero-variance floor); nan if < 2 points."""
        if self._count < 2:
            return math.nan
        return min(self._std / math.sqrt(1.0 - self._w2), FLOAT_MAX)

    # -- scoring ----------------------------------------------------------------
    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        # Score against the state *before* this point, then learn it: a value
        # must never pull its own prediction towards itself.
        if self._count < self.config["warmup"]:
            result = AnomalyResult.warming_up()
        else:
            result = gaussian_score(value, self._mean, self._scale(), self._z, self.config["threshold"], by=self.name)
        self._learn(value)
        return result

    def update_batch(self, ts_ms: np.ndarray, values: np.ndarray) -> BatchResult:
        values, centers, scales, scored = _batch_arrays(values, self.name)
        self._learn_batch(values.tolist(), 0, centers, scales, scored)
        return self._score_batch(values, centers, scales, scored)

    _FIELDS: ClassVar[tuple[str, ...]] = ("mean", "std", "w2", "peak", "count")

    @classmethod
    def update_many(
        cls, states: list[bytes | None], ts_ms: np.ndarray, values: np.ndarray, offsets: np.ndarray, **params: Any
    ) -> tuple[list[bytes], BatchResult]:
        """Many series (the contract in :mod:`detectors.base`): states decoded and encoded in bulk, the
        recursion series by series (inherently sequential, the same code as ``update_batch``), all points
        scored in one vectorised call (element-wise: the same bits)."""
        proto = cls(**params)
        layout = FixedStateLayout.of(proto.to_state())
        present = [blob for blob in states if blob is not None]
        # another layout (e.g. a subclass with fields of its own): the per-series path
        decoded = layout.decode(present) if layout is not None and present else {}
        if layout is None or decoded is None or set(layout.fields) != set(cls._FIELDS):
            return super().update_many(states, ts_ms, values, offsets, **params)
        have = np.array([blob is not None for blob in states], dtype=bool)
        fields = {}
        for key in cls._FIELDS:
            fields[key] = np.zeros(len(states), dtype=np.int64 if key == "count" else np.float64)
            if present:
                fields[key][have] = decoded[key]
        mean, std, w2, peak, count = (fields[k] for k in cls._FIELDS)
        valid = (
            np.isfinite(mean)
            & np.isfinite(std)
            & (std >= 0)
            & (w2 >= 0)
            & (w2 <= 1)
            & (count >= 0)
            & np.isfinite(peak)
            & (peak >= 0)
        )
        if not valid.all():  # the per-series path raises the StateError of from_state
            return super().update_many(states, ts_ms, values, offsets, **params)
        values, centers, scales, scored = _batch_arrays(values, cls.name)
        xs, bounds = values.tolist(), np.asarray(offsets).tolist()
        after = {k: v.tolist() for k, v in fields.items()}
        for k in range(len(states)):
            proto._mean, proto._std, proto._w2 = after["mean"][k], after["std"][k], after["w2"][k]
            proto._peak, proto._count = after["peak"][k], after["count"][k]
            proto._learn_batch(xs[bounds[k] : bounds[k + 1]], bounds[k], centers, scales, scored)
            after["mean"][k], after["std"][k], after["w2"][k] = proto._mean, proto._std, proto._w2
            after["peak"][k], after["count"][k] = proto._peak, proto._count
        return layout.encode(after, len(states)), proto._score_batch(values, centers, scales, scored)

    def _learn_batch(
        self, xs: list[float], first: int, centers: np.ndarray, scales: np.ndarray, scored: np.ndarray
    ) -> None:
        """Learn ``xs`` in order; point ``i`` is scored (at ``first + i``) against the state before it.

        The steps of :meth:`_update`, :meth:`_scale` and :meth:`_learn` on local
        variables (the hot loop of the streaming job's ``none`` case), in the same
        order of operations; the rare non-finite update goes through
        :meth:`_learn` itself.
        """
        hypot, isfinite, sqrt = math.hypot, math.isfinite, math.sqrt
        a, b = self._alpha, self._beta
        spread_decay = self._spread_decay
        sqrt_beta, sqrt_decay = self._sqrt_beta, self._sqrt_decay
        peak_share, rel, floor = self.PEAK_SHARE, self.REL_STD_FLOOR, self.ABS_STD_FLOOR
        mean, std, w2, peak, count = self._mean, self._std, self._w2, self._peak, self._count
        # count grows by one per point: the points before `warmup` is reached are not scored
        skip = max(0, min(len(xs), self.config["warmup"] - count))
        kept_centers: list[float] = []
        kept_scales: list[float] = []
        for i, x in enumerate(xs):
            if i >= skip:  # the state before the point, as in _update (spread: the `std` property)
                spread = min(std / sqrt(1.0 - w2), FLOAT_MAX) if count >= 2 else math.nan
                kept_centers.append(mean)
                kept_scales.append(max(spread, peak_share * peak, rel * abs(mean), floor))
            if count == 0:
                mean, std, w2, count = x, 0.0, 1.0, 1
                continue
            diff = x - mean
            new_mean = mean + a * diff
            new_std = sqrt_decay * hypot(std, sqrt_beta * diff)
            if not (isfinite(new_mean) and isfinite(new_std)):
                self._mean, self._std, self._w2, self._peak, self._count = mean, std, w2, peak, count
                self._learn(x)
                mean, std, w2, peak, count = self._mean, self._std, self._w2, self._peak, self._count
                continue
            mean, std = new_mean, new_std
            peak = max(min(abs(diff), FLOAT_MAX), peak * spread_decay)
            w2 = spread_decay * spread_decay * w2 + b * b
            count += 1
        self._mean, self._std, self._w2, self._peak, self._count = mean, std, w2, peak, count
        lo, hi = first + skip, first + len(xs)
        scored[lo:hi] = True
        centers[lo:hi] = kept_centers
        scales[lo:hi] = kept_scales

    def _score_batch(
        self, values: np.ndarray, centers: np.ndarray, scales: np.ndarray, scored: np.ndarray
    ) -> BatchResult:
        n = len(values)
        out = BatchResult(np.full(n, np.nan), np.full(n, np.nan), np.zeros(n), np.zeros(n, dtype=bool))
        if scored.any():
            part = gaussian_scores(
                values[scored], centers[scored], scales[scored], self._z, self.config["threshold"], by=self.name
            )
            out.value_lower_limit[scored] = part.value_lower_limit
            out.value_upper_limit[scored] = part.value_upper_limit
            out.anomaly_probability[scored] = part.anomaly_probability
            out.is_anomaly[scored] = part.is_anomaly
            out.explanation[scored] = part.explanation
        return out

    def _scale(self) -> float:
        """The std a point is scored with: the spread, floored (see PEAK_SHARE and the floors)."""
        return max(self.std, self.PEAK_SHARE * self._peak, self.REL_STD_FLOOR * abs(self._mean), self.ABS_STD_FLOOR)

    def _learn(self, x: float) -> None:
        if self._count == 0:
            self._mean, self._std, self._w2, self._count = x, 0.0, 1.0, 1
            return
        a, b = self._alpha, self._beta
        diff = x - self._mean
        mean = self._mean + a * diff
        # Finch: var' = (1-b) * (var + b * diff^2) (b = a: the exact EW variance), written
        # on std with hypot so that diff^2 cannot overflow for |x| > 1e154.
        std = self._sqrt_decay * math.hypot(self._std, self._sqrt_beta * diff)
        if not (math.isfinite(mean) and math.isfinite(std)):
            # Only reachable with |x|, |mean| near the float limit: the same update
            # on halved quantities (exact scaling), std saturated at the float max.
            mean = (1.0 - a) * self._mean + a * x
            half_diff = x * 0.5 - self._mean * 0.5
            std = min(2.0 * self._sqrt_decay * math.hypot(self._std * 0.5, self._sqrt_beta * half_diff), FLOAT_MAX)
        self._mean, self._std = mean, std
        # |diff| overflows to inf only for |x|, |mean| near the float limit: keep the largest float
        self._peak = max(min(abs(diff), FLOAT_MAX), self._peak * self._spread_decay)
        self._w2 = self._spread_decay * self._spread_decay * self._w2 + b * b
        self._count += 1

    # -- state ------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {"mean": self._mean, "std": self._std, "w2": self._w2, "peak": self._peak, "count": self._count}

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        if version < 2:
            raise StateError(
                f"{self.name}: stored state has version {version}, written before the spread had its own "
                "span (spread_window); start from a new checkpoint"
            )
        try:
            mean, std, w2, peak, count = (state[k] for k in ("mean", "std", "w2", "peak", "count"))
        except KeyError as err:
            raise StateError(f"{self.name}: stored state lacks field {err}") from None
        if not (
            math.isfinite(mean)
            and math.isfinite(std)
            and std >= 0
            and 0 <= w2 <= 1
            and count >= 0
            and math.isfinite(peak)
            and peak >= 0
        ):
            raise StateError(f"{self.name}: stored state is inconsistent: {state}")
        self._mean, self._std, self._w2, self._count = float(mean), float(std), float(w2), int(count)
        self._peak = float(peak)


def _batch_arrays(values: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The values as finite float64 (or NonFiniteValueError), and each point's center, scale and
    whether it is scored, for :meth:`EMADetector._learn_batch` to fill."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise NonFiniteValueError(f"{name}: values must be finite")
    n = len(values)
    return values, np.zeros(n), np.ones(n), np.zeros(n, dtype=bool)
