"""The product's default detector (``"default"``): novelty relative to everything seen so far.

A point is scored by two cheap, causal "has this ever happened before?" checks and
the larger of the two wins:

* **Spatial novelty** (Numenta's "value outside the range seen so far"): the
  excess of the value beyond the all-time ``[min, max]`` of the earlier points,
  as a fraction of that range. Catches level shifts, spikes and drops to new
  extremes, whatever the series' scale.
* **Context novelty** (a nearest-neighbour variant of the "have I seen this
  context before" idea behind CAD OSE / KNN-CAD): the RMS distance between the
  last ``L = 8`` values (the current one included) and the most similar earlier,
  non-overlapping stretch of ``L`` values among the last ``1536`` points. A
  periodic or regular series has near matches for every normal stretch, so the
  distance is small; a changed shape, a flat-line in a cycle or a burst of noise
  has none. The distance is turned into a *record ratio*: distance divided by the
  largest distance seen so far (after a burn-in). A ratio above 1 means "the
  most novel context since the detector settled", so the score needs no scale
  and no distributional assumption, and false "records" become rarer the longer
  a stream is stable (for exchangeable data the chance that point ``n`` is a
  record is ``1/n``).

The novelty ``c`` is ``max(context ratio, 1 + spatial excess)`` (the spatial term
only when the value is outside the range; both are ">= 1: never seen before")
and ``anomaly_probability = c / (1 + c)``: graded, strictly below 1, with 0.5
meaning "exactly as novel as the most novel thing seen". Only the ordering of
scores matters for NAB, and it never saturates, so a single threshold across
series works.

>>> import math
>>> from detectors.default import DefaultDetector
>>> det = DefaultDetector()
>>> det.update(0, 1.0).value_upper_limit is None       # warming up
True
>>> results = [det.update(i * 60_000, math.sin(i / 10)) for i in range(1, 2000)]
>>> any(r.is_anomaly for r in results[400:])           # a clean cycle: nothing new
False
>>> det.update(2000 * 60_000, 5.0).is_anomaly           # far outside the range seen so far
True

Tuned constants (chosen on the NAB data, one setting for every series)
----------------------------------------------------------------------
* ``CONTEXT_LENGTH = 8``: points per compared stretch (long enough to carry shape,
  short enough to react within a few points).
* ``HISTORY = 1536``: points searched for a matching context (a bit over 5 days of
  5-minute data, so daily cycles always have a match); also the state's size.
* ``BURN_IN = 150``: the record maximum of context distances starts after 150
  points and context scores after 300 (the first stretches have no match yet).
* ``threshold = 0.504`` (default of the parameter): the standard-profile NAB
  optimiser's choice, i.e. a spatial excess of ~1 % of the range or a context
  record beating the previous one by ~1 %.

Contract details
----------------
* No self-leak: the point is compared with earlier points only (ranges, past
  stretches and the record maximum are updated after scoring).
* Warm-up: the first ``WARMUP = 16`` points return :meth:`AnomalyResult.warming_up`.
* Bounds: ``value_lower_limit``/``value_upper_limit`` is the spatial band,
  ``[min - e*range, max + e*range]`` with ``e = c_threshold - 1`` and
  ``c_threshold = threshold / (1 - threshold)``: a value outside it is always an
  anomaly. A context anomaly can also be flagged *inside* the band (a new shape
  within the usual range); the band says nothing about shape.
* Any finite input is valid; arithmetic near the float range uses halved values
  (exact in binary) and an overflowing distance counts as maximal novelty.
* State: the last ``HISTORY`` values (float64, ~12 KB) plus a handful of numbers,
  constant over the stream's life; ``update_batch`` is the base-class loop (per
  point work is one ``HISTORY x L`` distance computation, ~30 us).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from detectors.base import AnomalyResult, Detector, StateError
from detectors.params import Param, ParamSchema

CONTEXT_LENGTH = 8
HISTORY = 1536
BURN_IN = 150
WARMUP = 16
MAX_NOVELTY = 1e12  # caps c so that the probability stays strictly below 1


def _ratio(a: float, b: float) -> float:
    """``a / b`` for non-negative distances, total: 0/0 = 0, x/0 and inf/finite = MAX_NOVELTY."""
    if a <= 0.0:
        return 0.0
    if math.isinf(a):
        return 1.0 if math.isinf(b) else MAX_NOVELTY
    if b <= 0.0:
        return MAX_NOVELTY
    return min(a / b, MAX_NOVELTY)


class DefaultDetector(Detector):
    """Spatial + context novelty relative to all history; see the module docstring."""

    name: ClassVar[str] = "default"
    state_version: ClassVar[int] = 1
    params: ClassVar[ParamSchema] = ParamSchema(
        (
            Param(
                "threshold",
                float,
                0.504,
                "anomaly_probability at or above which a point is an anomaly "
                "(0.5 = as novel as the most novel point so far)",
                minimum=0.0,
                maximum=1.0,
                exclusive_minimum=True,
                exclusive_maximum=True,
            ),
        )
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        thr = self.config["threshold"]
        self._c_threshold = thr / (1.0 - thr)
        # Values are kept halved (exact in binary) so differences never overflow.
        # Double-written ring: slots p and p + HISTORY hold the same value, so the
        # last m values are always the contiguous slice buf[p+HISTORY-m+1 : p+HISTORY+1].
        self._buf = np.zeros(2 * HISTORY, dtype=np.float64)
        self._pos = HISTORY - 1  # slot (< HISTORY) of the latest value
        self._count = 0  # points seen (not capped)
        self._lo = 0.0  # halved all-time minimum
        self._hi = 0.0  # halved all-time maximum
        self._record = 0.0  # largest context distance seen after the burn-in

    # -- scoring ------------------------------------------------------------------------
    def _context_distance(self, half: float) -> float:
        """RMS distance of the last L values (ending with ``half``) to the closest earlier stretch."""
        recent = self._recent()  # oldest first, the current point not included
        m = len(recent)
        query = np.empty(CONTEXT_LENGTH)
        query[:-1] = recent[-(CONTEXT_LENGTH - 1) :]
        query[-1] = half
        # Past stretches end at least L points back: no overlap with the query.
        past = np.lib.stride_tricks.sliding_window_view(recent[: m - CONTEXT_LENGTH + 1], CONTEXT_LENGTH)
        with np.errstate(over="ignore", invalid="ignore"):
            dist = float(np.sqrt(((past - query) ** 2).mean(axis=1)).min())
        return math.inf if math.isnan(dist) else dist

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        half = value * 0.5
        n = self._count
        if n < WARMUP:
            self._learn(half, None)
            return AnomalyResult.warming_up()

        lo, hi = self._lo, self._hi
        span = hi - lo  # halved range; finite because lo, hi are halved
        novelty = 0.0
        if half > hi or half < lo:
            excess = (half - hi) if half > hi else (lo - half)
            novelty = 1.0 + _ratio(excess, span)

        dist = None
        if n >= 2 * CONTEXT_LENGTH + 1 and n >= BURN_IN:
            dist = self._context_distance(half)
            if n >= 2 * BURN_IN:
                novelty = max(novelty, _ratio(dist, self._record))

        novelty = min(novelty, MAX_NOVELTY)
        prob = novelty / (1.0 + novelty)
        is_anomaly = prob >= self.config["threshold"]
        e = self._c_threshold - 1.0
        lower = _unhalve(lo - e * span)
        upper = _unhalve(hi + e * span)
        self._learn(half, dist)
        return AnomalyResult(lower, upper, prob, is_anomaly)

    def _recent(self) -> np.ndarray:
        m = min(self._count, HISTORY)
        end = self._pos + HISTORY + 1
        return self._buf[end - m : end]

    def _learn(self, half: float, dist: float | None) -> None:
        p = (self._pos + 1) % HISTORY
        self._buf[p] = half
        self._buf[p + HISTORY] = half
        self._pos = p
        if self._count == 0:
            self._lo = self._hi = half
        else:
            self._lo, self._hi = min(self._lo, half), max(self._hi, half)
        if dist is not None and self._count >= BURN_IN:
            self._record = max(self._record, dist)
        self._count += 1

    # -- state --------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "recent": self._recent().copy(),
            "count": self._count,
            "lo": self._lo,
            "hi": self._hi,
            "record": self._record,
        }

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        try:
            recent = state["recent"]
            count = int(state["count"])
            lo, hi, record = float(state["lo"]), float(state["hi"]), float(state["record"])
        except KeyError as err:
            raise StateError(f"{self.name}: stored state lacks field {err}") from None
        if not (
            isinstance(recent, np.ndarray)
            and recent.dtype == np.float64
            and recent.shape == (min(count, HISTORY),)
            and count >= 0
            and lo <= hi
            and record >= 0.0
        ):
            raise StateError(f"{self.name}: stored state is inconsistent")
        m = len(recent)
        self._buf[:] = 0.0
        self._buf[:m] = recent
        self._buf[HISTORY : HISTORY + m] = recent
        self._pos = m - 1 if m else HISTORY - 1
        self._count, self._lo, self._hi, self._record = count, lo, hi, record


def _unhalve(half: float) -> float:
    """Back to the original scale, clipped to the finite float range."""
    return float(np.clip(half, -np.finfo(np.float64).max / 2, np.finfo(np.float64).max / 2) * 2.0)
