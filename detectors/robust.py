"""Rolling median / MAD detector (``"robust"``).

Each point is scored against the median and the median absolute deviation
(MAD) of the last ``window`` points *before* it. The robust z-score
``0.6745 * (x - median) / MAD`` (0.6745 makes MAD/0.6745 estimate sigma for
normal data) is turned into a two-sided normal probability exactly as in
:mod:`detectors.ema` (``2*Phi(z) - 1`` up to ``1 - 1e-9``, graded and always
below 1.0 beyond, see :mod:`detectors._stats`), and the band is
``median ± z * MAD / 0.6745``, the sigma estimate floored at half the largest
recent deviation (``PEAK_SHARE``, below). Median and MAD ignore outliers, so a
burst of spikes does not move the centre the way it moves a mean.

>>> from detectors.robust import RobustDetector
>>> det = RobustDetector(window=30, warmup=5)
>>> det.update(0, 10.0).value_upper_limit is None      # warming up
True
>>> results = [det.update(i * 1000, 10.0 + (i % 3)) for i in range(1, 40)]
>>> results[-1].is_anomaly, det.update(40_000, 100.0).is_anomaly
(False, True)
>>> import numpy as np
>>> batch = RobustDetector(window=30, warmup=5).update_batch(np.arange(40), 10.0 + np.arange(40) % 3)
>>> bool(batch.is_anomaly.any())
False

Details
-------
* Quantised data: MAD is taken as at least half the smallest step between
  distinct values of the window (MAD = 0 whenever half the window sits on the
  median, as with counts or rounded readings; the mean absolute deviation as a
  fallback would flag ~10 % of a rounded noise series). A window of
  one value only has the floor ``max(REL_SCALE_FLOOR * |median|,
  ABS_SCALE_FLOOR)`` (1e-9 relative, 1e-12 absolute): a constant window followed
  by the same constant is never anomalous, by a clearly different value it is.
* Peak floor: sigma is at least ``PEAK_SHARE = 0.5`` of the largest recent
  deviation ``|x - median|`` (that maximum decays by ``1 - 2 / (PEAK_SPAN + 1)``
  per point, ``PEAK_SPAN = 30,000``). Without it the median/MAD band of a series
  that sits still most of the time is so narrow that every ordinary move is a
  50-sigma event, and NAB's threshold ranks those above the real anomalies (4.9
  on NAB's standard profile). With it an excursion like the largest recent one
  is 2 sigma, one 1.95 times larger reaches the default 3.89-sigma band: a spike
  like the last ones is no new alarm, a record one is. The price: on normal noise
  the largest deviation over thousands of points is ~4 sigma, so the floor (~2
  sigma) rules there too and the band is about twice as wide as MAD alone would
  make it; the MAD term rules early on and on quiet stretches after the peak has
  decayed.
  Chosen by leave-one-folder-out CV on the 31 shared NAB series
  (``bench/simple_cv.py``): the selection picks window 100 / 0.5 / 30,000 in 4
  of 5 folds and scores 42.6 (standard) on the held-out folders; in-sample
  49.5 / 47.6 / 51.9. docs/detectors.md has the table.
* Warm-up: the first ``warmup`` points return :meth:`AnomalyResult.warming_up`;
  until ``window`` points are seen the statistics use all points so far.
* Huge values: when the window holds magnitudes above ``1.8e308 / 4`` the
  statistics are computed on values scaled by 1/4 (exact in binary), so
  differences never overflow; bounds beyond the float range are clipped.
* State: the ring buffer (``window`` float64 values, allocated in full from
  the first point), the write position and the count: ``8 * window`` bytes
  plus ~100 bytes, constant over the stream's life (about 0.9 KB for the
  default ``window = 100``). Version 2 adds the decaying peak; version 1 states
  are migrated with peak 0 (the floor builds up again from the next points).
* ``update_batch`` computes the window medians/MADs of a whole batch with numpy
  and gives bit-identical results to the point-by-point loop: order statistics
  do not depend on element order, and the only sum (the zero-MAD fallback)
  uses :func:`math.fsum`, which is exactly rounded and order independent.
"""

from __future__ import annotations

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

MAD_TO_SIGMA = 0.6745  # MAD of N(0, 1); z = 0.6745 * (x - median) / MAD
_SCALE_DOWN_ABOVE = FLOAT_MAX / 4.0  # beyond this, work on values / 4
_BATCH_ROWS = 4096  # rows of the (rows x window) matrix built at once in update_batch


def _window_stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a 2-D array of finite values: (median, sigma estimate, factor).

    Both are in the domain scaled by ``factor`` (1 or 1/4, per row). Used by the
    scalar and the batch paths alike, so both give the same bits.
    """
    max_abs = np.max(np.abs(rows), axis=1)
    factor = np.where(max_abs > _SCALE_DOWN_ABOVE, 0.25, 1.0)
    scaled = rows * factor[:, None]
    median = _median(scaled)
    dev = np.abs(scaled - median[:, None])
    # Quantised data (counts, rounded readings) often has MAD = 0 (half the window on
    # the median): MAD is taken as at least half the smallest step between distinct
    # values, so one step is never a many-sigma event. Order statistics only: the same
    # bits whatever the order of the ring buffer.
    gaps = np.diff(np.sort(scaled, axis=1), axis=1)
    gaps[gaps <= 0.0] = np.inf
    step = gaps.min(axis=1)
    step[np.isinf(step)] = 0.0  # all values equal: the scale floor of the detector applies
    sigma = np.maximum(_median(dev), 0.5 * step) / MAD_TO_SIGMA
    return median, sigma, factor


def _median(a: np.ndarray) -> np.ndarray:
    """Row medians via partition; the middle pair is averaged as (lo + hi) * 0.5
    (cannot overflow: callers keep |values| <= max/4 ... max/2)."""
    n = a.shape[1]
    k = n // 2
    if n % 2:
        return np.partition(a, k, axis=1)[:, k]
    part = np.partition(a, (k - 1, k), axis=1)
    return (part[:, k - 1] + part[:, k]) * 0.5


class RobustDetector(Detector):
    """Rolling median ± z·MAD/0.6745 band; see the module docstring."""

    name: ClassVar[str] = "robust"
    state_version: ClassVar[int] = 2
    params: ClassVar[ParamSchema] = ParamSchema(
        (
            Param("window", int, 100, "points in the rolling median/MAD window", minimum=3),
            TAIL_THRESHOLD_PARAM,
            Param("warmup", int, 10, "points learned before the first scored point", minimum=3),
        )
    )

    # sigma is at least PEAK_SHARE of the largest recent |x - median|, which decays with
    # the span PEAK_SPAN (see the module docstring); cross-validated (bench/simple_cv.py)
    PEAK_SHARE: ClassVar[float] = 0.5
    PEAK_SPAN: ClassVar[int] = 30_000
    REL_SCALE_FLOOR: ClassVar[float] = 1e-9
    ABS_SCALE_FLOOR: ClassVar[float] = 1e-12

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._z = two_sided_quantile(self.config["threshold"])
        self._buf = np.zeros(self.config["window"], dtype=np.float64)
        self._pos = 0  # next slot to write
        self._count = 0  # points seen (not capped)
        self._peak = 0.0  # largest recent |x - median| (original scale), decaying by _peak_decay a point
        self._peak_decay = 1.0 - 2.0 / (self.PEAK_SPAN + 1.0)

    @property
    def count(self) -> int:
        return self._count

    def history(self) -> np.ndarray:
        """The points in the window, oldest first (a copy)."""
        w = self.config["window"]
        if self._count < w:
            return self._buf[: self._count].copy()
        return np.concatenate((self._buf[self._pos :], self._buf[: self._pos]))

    # -- scoring ----------------------------------------------------------------
    def _score(self, value: float, median: float, sigma: float, factor: float) -> AnomalyResult:
        """Score one point (median and sigma in the domain scaled by ``factor``), then fold its
        deviation into the decaying peak. Both paths call this in time order: the same bits."""
        peak = self._peak * factor
        scale = max(sigma, self.PEAK_SHARE * peak, self.REL_SCALE_FLOOR * abs(median), self.ABS_SCALE_FLOOR * factor)
        result = gaussian_score(value, median, scale, self._z, self.config["threshold"], factor, by=self.name)
        # |x - median| can overflow only for |x| near the float limit: keep the largest float
        dev = min(abs(value * factor - median) / factor, FLOAT_MAX)
        self._peak = max(dev, self._peak * self._peak_decay)
        return result

    def _push(self, value: float) -> None:
        self._buf[self._pos] = value
        self._pos = (self._pos + 1) % self.config["window"]
        self._count += 1

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        # Statistics come from the window *before* this point (no self-leak).
        if self._count < self.config["warmup"]:
            result = AnomalyResult.warming_up()
        else:
            n = min(self._count, self.config["window"])
            median, sigma, factor = _window_stats(self._buf[None, :n])
            result = self._score(value, float(median[0]), float(sigma[0]), float(factor[0]))
        self._push(value)
        return result

    def update_batch(self, ts_ms: np.ndarray, values: np.ndarray) -> BatchResult:
        """Vectorised: once the window is full, window statistics for many points at once."""
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise NonFiniteValueError(f"{self.name}: values must be finite")
        ts = np.asarray(ts_ms, dtype=np.int64)
        if ts.shape != values.shape or values.ndim != 1:
            raise ValueError(f"{self.name}: ts_ms and values must be 1-D arrays of the same length")
        w, total = self.config["window"], len(values)
        results: list[AnomalyResult] = []
        i = 0
        # Until the window is full (and during warm-up) the window length varies:
        # go point by point, it is at most `window` points once per stream.
        while i < total and (self._count < w or self._count < self.config["warmup"]):
            results.append(self._update(int(ts[i]), float(values[i])))
            i += 1
        if i < total:
            # Row j of `windows` is the window before point i + j: the last w
            # points of (history oldest-first, then this batch).
            series = np.concatenate((self.history(), values[i:]))
            windows = np.lib.stride_tricks.sliding_window_view(series, w)
            for start in range(0, total - i, _BATCH_ROWS):
                stop = min(start + _BATCH_ROWS, total - i)
                median, sigma, factor = _window_stats(windows[start:stop])
                for j in range(stop - start):
                    results.append(
                        self._score(float(values[i + start + j]), float(median[j]), float(sigma[j]), float(factor[j]))
                    )
            # Learn the batch: same ring-buffer contents, position and count as
            # pushing one by one.
            k = total - i
            slots = (self._pos + np.arange(max(k - w, 0), k)) % w
            self._buf[slots] = values[total - len(slots) :]
            self._pos = (self._pos + k) % w
            self._count += k
        return BatchResult.from_results(results)

    @classmethod
    def update_many(
        cls, states: list[bytes | None], ts_ms: np.ndarray, values: np.ndarray, offsets: np.ndarray, **params: Any
    ) -> tuple[list[bytes], BatchResult]:
        """Many series (the contract in :mod:`detectors.base`), vectorised across them: states decoded and
        encoded in bulk; the window before every point (the last ``min(count, window)`` values of its series)
        gathered into one matrix per window length and put through :func:`_window_stats` (row by row:
        the same bits as one row at a time); scores element-wise."""
        proto = cls(**params)
        w, warmup = proto.config["window"], proto.config["warmup"]
        loaded = _load_many(proto, states)
        if loaded is None:  # another layout (e.g. a subclass's) or a bad state: per series (raises as from_state)
            return super().update_many(states, ts_ms, values, offsets, **params)
        layout, buf, pos, count, peak = loaded
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise NonFiniteValueError(f"{cls.name}: values must be finite")
        offsets = np.asarray(offsets, dtype=np.int64)
        sizes = np.diff(offsets)
        series, owner, j, at = _histories(buf, pos, count, values, offsets, w)
        before = count[owner] + j  # points its series had seen before it
        span = np.minimum(before, w)
        scored = before >= warmup
        median_of, sigma_of, factor_of = np.zeros(len(values)), np.zeros(len(values)), np.ones(len(values))
        for length in np.unique(span[scored]).tolist():
            which = np.flatnonzero(scored & (span == length))
            median, sigma, factor = _window_stats(series[at[which][:, None] - length + np.arange(length)])
            median_of[which], sigma_of[which], factor_of[which] = median, sigma, factor
        scales, peaks = proto._decayed_scales(values, owner, scored, median_of, sigma_of, factor_of, peak)
        result = proto._score_many(values, scored, median_of, scales, factor_of)
        # learn: the ring buffers as pushing point by point leaves them
        last = j >= sizes[owner] - w
        buf[owner[last], (pos[owner[last]] + j[last]) % w] = values[last]
        after = {"buffer": buf, "pos": (pos + sizes) % w, "count": count + sizes, "peak": np.array(peaks)}
        return layout.encode(after, len(states)), result

    def _decayed_scales(
        self, values: np.ndarray, owner: np.ndarray, scored: np.ndarray, median_of: np.ndarray,
        sigma_of: np.ndarray, factor_of: np.ndarray, peak: np.ndarray,
    ) -> tuple[list[float], list[float]]:
        """Each point's scale and each series' peak after its points.

        The decaying peak is a recursion through each series' scored points in time order (points
        are grouped by series, in time order within one): the steps of _score, point by point.
        """
        peaks, owners = peak.tolist(), owner.tolist()
        xs, medians, sigmas, factors = values.tolist(), median_of.tolist(), sigma_of.tolist(), factor_of.tolist()
        share, rel, floor, decay = self.PEAK_SHARE, self.REL_SCALE_FLOOR, self.ABS_SCALE_FLOOR, self._peak_decay
        scales = [1.0] * len(xs)  # unscored points keep 1.0 (never read)
        for i in np.flatnonzero(scored).tolist():
            s, f, m = owners[i], factors[i], medians[i]
            scales[i] = max(sigmas[i], share * (peaks[s] * f), rel * abs(m), floor * f)
            dev = min(abs(xs[i] * f - m) / f, FLOAT_MAX)
            peaks[s] = max(dev, peaks[s] * decay)
        return scales, peaks

    def _score_many(
        self, values: np.ndarray, scored: np.ndarray, median_of: np.ndarray, scales: list[float],
        factor_of: np.ndarray,
    ) -> BatchResult:
        """The scored points' results, element-wise; huge values through _score's scaled scalar path."""
        n = len(values)
        lower, upper = np.full(n, np.nan), np.full(n, np.nan)
        prob, flag = np.zeros(n), np.zeros(n, dtype=bool)
        why = np.full(n, None, dtype=object)
        scale_of = np.array(scales)
        plain = scored & (factor_of == 1.0)
        z, threshold = self._z, self.config["threshold"]
        part = gaussian_scores(values[plain], median_of[plain], scale_of[plain], z, threshold, by=self.name)
        columns = (lower, upper, prob, flag, why)
        for column, part_column in zip(columns, _result_columns(part), strict=True):
            column[plain] = part_column
        for k in np.flatnonzero(scored & ~plain).tolist():
            r = gaussian_score(float(values[k]), float(median_of[k]), scales[k], z, threshold, float(factor_of[k]),
                               by=self.name)
            for column, value in zip(columns, _result_columns(r), strict=True):
                column[k] = value
        return BatchResult(lower, upper, prob, flag, why)

    # -- state ------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {"buffer": self._buf, "pos": self._pos, "count": self._count, "peak": self._peak}

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        try:
            buf, pos, count = state["buffer"], state["pos"], state["count"]
            # version 1 had no peak: migrated as "no excursion seen yet" (the floor builds up again)
            peak = float(state["peak"]) if version >= 2 else 0.0
        except KeyError as err:
            raise StateError(f"{self.name}: stored state lacks field {err}") from None
        w = self.config["window"]
        if not (
            isinstance(buf, np.ndarray)
            and buf.shape == (w,)
            and buf.dtype == np.float64
            and 0 <= pos < w
            and count >= 0
            and np.all(np.isfinite(buf))
            and np.isfinite(peak)
            and peak >= 0.0
        ):
            raise StateError(f"{self.name}: stored state does not match window={w}")
        self._buf, self._pos, self._count, self._peak = buf.copy(), int(pos), int(count), peak


def _result_columns(r: Any) -> tuple[Any, Any, Any, Any, Any]:
    """A BatchResult's columns, or an AnomalyResult's values, in the order update_many fills them."""
    return r.value_lower_limit, r.value_upper_limit, r.anomaly_probability, r.is_anomaly, r.explanation


def _load_many(
    proto: RobustDetector, states: list[bytes | None]
) -> tuple[FixedStateLayout, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The states decoded in bulk (fresh series: zeros), or None if one has another layout or a bad value."""
    w = proto.config["window"]
    layout = FixedStateLayout.of(proto.to_state())
    present = [blob for blob in states if blob is not None]
    decoded = layout.decode(present) if layout is not None and present else {}
    if layout is None or decoded is None or set(layout.fields) != {"buffer", "pos", "count", "peak"}:
        return None
    n_series = len(states)
    have = np.array([blob is not None for blob in states], dtype=bool)
    buf = np.zeros((n_series, w))
    pos = np.zeros(n_series, dtype=np.int64)
    count = np.zeros(n_series, dtype=np.int64)
    peak = np.zeros(n_series)
    if present:
        buf[have], pos[have], count[have] = decoded["buffer"], decoded["pos"], decoded["count"]
        peak[have] = decoded["peak"]
    usable = ((pos >= 0) & (pos < w) & (count >= 0)).all() and np.isfinite(buf).all()
    if not usable or not (np.isfinite(peak) & (peak >= 0)).all():
        return None
    return layout, buf, pos, count, peak


def _histories(
    buf: np.ndarray, pos: np.ndarray, count: np.ndarray, values: np.ndarray, offsets: np.ndarray, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every series oldest first, its history (the last min(count, w) values) then its new points, in one
    array; per point: its series, its rank in its series' batch and where it sits in that array."""
    n_series = len(count)
    sizes = np.diff(offsets)
    hist = np.minimum(count, w)
    lengths = hist + sizes
    base = np.cumsum(lengths) - lengths
    series = np.empty(int(lengths.sum()))
    row = np.repeat(np.arange(n_series), hist)
    i = np.arange(len(row)) - np.repeat(np.cumsum(hist) - hist, hist)
    oldest = np.where(count >= w, pos, 0)
    series[base[row] + i] = buf[row, (oldest[row] + i) % w]
    owner = np.repeat(np.arange(n_series), sizes)  # series of each point
    j = np.arange(len(values)) - offsets[owner]  # rank of the point in its series' batch
    at = base[owner] + hist[owner] + j  # where each point sits in `series`
    series[at] = values
    return series, owner, j, at
