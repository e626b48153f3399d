"""The product's default detector (``"default"``): forecasts of this point, calibrated residuals, novelty.

What it asks of every point, in the stream's own units of surprise (*sigma*):

* **Is the value far from what this minute should be?** Two forecasts of the
  value, each with its own residual scale (an exponentially weighted standard
  deviation of its past residuals, span ``SCALE_SPAN``):

  - the *level*: an exponentially weighted mean of the recent values (span
    ``LEVEL_SPAN``);
  - the *seasonal* forecast: the usual shape at this time of day (a profile of
    time-of-day bins, each the moving average over days of the bin's mean net
    of the offset at the time) plus the stream's current offset from that
    profile (an exponentially weighted mean of the recent seasonal residuals,
    span ``OFFSET_SPAN``). A level shift moves the offset, not the shape, so
    the day after it is forecast right.

  The point's surprise is the *smaller* of the two z-scores: a value one of the
  forecasts explains is not anomalous. So a daily ramp (the level lags, the
  profile knows it) and a level that moved today (the profile lags, the level
  follows) are both normal, and a spike is far from both.
* **Is the value beyond every value seen so far?** A value beyond the all-time
  range by a share ``e`` of the range's width, which the forecasts also miss by
  ``NOVELTY_MIN_SIGMA`` or more, counts ``NOVELTY_SIGMA + NOVELTY_GAIN * e`` sigma
  more: a new extreme ranks above any ordinary deviation, more so the further out
  it is (the new highs of a young stream that the forecasts expect are not news).
  It counts once the stream spans ``NOVELTY_AFTER_MS`` (a day): before, the range
  is too young to say what is new.
* **Is the last stretch unlike the same time yesterday and a week ago?** The
  seasonal residual ``min(|x - same bin yesterday|, |x - same bin a week ago|)``
  (a holiday yesterday or last week does not make today odd) is averaged over
  the last ``SUSTAINED_SPAN`` points; when that average is ``SUSTAINED_RATIO``
  times its usual level (a moving average, span ``USUAL_SPAN``) or more, the
  point counts ``NOVELTY_SIGMA + (ratio - SUSTAINED_RATIO)`` sigma, if the ratio
  is above its recent peak (which decays by ``PEAK_DECAY`` a point): one change,
  one alarm, not one per rest while today differs from yesterday. It scores
  after ``SUSTAINED_DAYS`` days of the stream. This finds a day whose shape
  changed while no single value is extreme (a missing daily peak, a quiet
  holiday).

The score is the largest of these, reported as a probability on the shared
two-sided normal scale of :mod:`detectors._stats` (``threshold`` is a probability
there; the default is 8 sigma). After an alarm the next ``ALARM_REST`` points
report 0: one event, one alarm (the detector keeps learning meanwhile).

Learning is robust to the anomalies it reports: a residual enters the level and
the offset clipped at ``CLIP`` scales, so one spike does not drag the forecast;
a real level shift is followed within a few dozen points.

Time of day, cadence and gaps
-----------------------------
Profiles are kept in bins of ``bin`` milliseconds aligned to UTC midnight: the
smallest of 5, 10, 15, 20, 30 minutes, 1, 2, 3, 4, 6 hours at least the stream's
interval (the shortest positive interval among its first ``WARMUP`` points). A
per-minute stream therefore has 288 five-minute bins a day, an hourly one 24.
A stream coarser than 6 hours has no seasonal parts. Since bins are positions in
the day, not counts of points, a gap leaves the bins it skipped as they were: it
restarts nothing, and the seasonal parts work on gappy per-minute streams.

State: about 21 KiB per series, fixed (three profile arrays of at most 2,016
bins and 19 numbers), whatever the stream's length; it is the same layout for
every stream, so the streaming job decodes and encodes the states of a whole
bucket at once (``update_many``).

How the constants were chosen, the ablation and the scores per corpus are in
``docs/detectors.md`` (``bench/default_select.py`` reproduces them).

>>> import numpy as np
>>> from detectors.default import DefaultDetector
>>> det = DefaultDetector()
>>> ts = np.arange(2000) * 60_000                       # per-minute points
>>> values = 100 + 10 * np.sin(ts / 86_400_000 * 2 * np.pi) + np.random.default_rng(1).normal(0, 1, 2000)
>>> values[1500] += 40                                  # a spike beyond every value so far
>>> batch = det.update_batch(ts, values)
>>> np.flatnonzero(batch.is_anomaly).tolist()
[1500]
>>> import json; json.loads(batch.explanation[1500])["kind"]
'new_range'
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from detectors._stats import FLOAT_MAX, two_sided_probability, two_sided_quantile
from detectors.base import AnomalyResult, BatchResult, Detector, NonFiniteValueError
from detectors.explain import explanation
from detectors.params import Param, ParamSchema
from detectors.state import FixedStateLayout, StateError

WARMUP = 30  # points learnt before the first scored one (they also fix the stream's interval)
LEVEL_SPAN = 30  # span (points) of the level forecast
SCALE_SPAN = 2000  # span (points) of both residual scales
SCALE_PRIOR = 300  # a scale starts as the RMS of its first WARMUP residuals, weighted as this many
OFFSET_SPAN = 30  # span (points) of the offset from the seasonal profile
PROFILE_WEIGHT = 0.5  # weight of today's bin mean in the profile (a moving average over days)
CLIP = 4.0  # residuals enter the level and the offset clipped at this many scales ...
LEVEL_RUN = 5  # ... but after this many points in a row beyond the band on one side, the forecasts jump to the value
LEVEL_ALARM = True  # ... and that point alarms as a level shift, even within a rest
NOVELTY_SIGMA = 10.0  # a value beyond the all-time range counts at least this many sigma ...
NOVELTY_GAIN = 100.0  # ... plus this many per range width it lies beyond the range ...
NOVELTY_MIN_SIGMA = 4.0  # ... when the forecasts miss it by this many sigma at least (a young stream's new highs ...
NOVELTY_AFTER_MS = 86_400_000  # ... are no news) and once the stream spans a day (a young range says little)
PROFILE_NET = True  # the profile keeps the shape net of the offset (False: raw bin means; an ablation)
SEASONAL_FORECAST = True  # whether the seasonal forecast competes with the level (off: an ablation)
FORECAST_CHOICE = "better"  # "better": the forecast with the smaller residual scale; "closer": the smaller z
SUSTAINED_SPAN = 24  # span (points) of the mean seasonal residual
USUAL_SPAN = 2000  # span (points) of its usual level
SUSTAINED_RATIO = 6.0  # the mean seasonal residual at this many times its usual level is a sustained anomaly
SUSTAINED_DAYS = 2  # days of the stream before the sustained part scores
PEAK_DECAY = 0.9995  # the sustained part scores only above its recent peak, which decays by this per point
ALARM_REST = 30  # points after an alarm that report 0
THRESHOLD_SIGMA = 7.0  # the default threshold, in sigma
BINS_MS = tuple(m * 60_000 for m in (5, 10, 15, 20, 30, 60, 120, 180, 240, 360))
DAY_MS = 86_400_000
DAY_BINS = DAY_MS // BINS_MS[0]  # 288: the most bins a day has
WEEK_BINS = 7 * DAY_BINS
TINY = 1e-300  # smallest residual scale (a constant stream)

DEFAULT_THRESHOLD = two_sided_probability(THRESHOLD_SIGMA)

_SCALARS_F = ("level", "level_std", "offset", "season_std", "lo", "hi", "bin_mean", "sustained", "usual", "peak")
_SCALARS_I = (
    "count", "season_n", "first_ts", "last_ts", "min_gap", "bin_ms", "bin", "bin_n", "sustained_n", "rest", "run",
)
_ARRAYS = ("profile", "yesterday", "week")


def _bin_for(interval: int) -> int:
    """The profile bin for a stream with this interval (ms); 0: no seasonal parts."""
    return next((b for b in BINS_MS if b >= interval), 0) if interval > 0 else 0


class DefaultDetector(Detector):
    """Level and seasonal forecasts, all-time range, sustained seasonal change; see the module docstring."""

    name: ClassVar[str] = "default"
    state_version: ClassVar[int] = 7
    params: ClassVar[ParamSchema] = ParamSchema(
        (
            Param(
                "threshold",
                float,
                DEFAULT_THRESHOLD,
                "anomaly_probability at or above which a point is an anomaly, on the two-sided normal "
                f"scale of detectors._stats (default: {THRESHOLD_SIGMA:g} sigma)",
                minimum=0.0,
                maximum=1.0,
                exclusive_minimum=True,
                exclusive_maximum=True,
            ),
        )
    )
    _FIELDS: ClassVar[tuple[str, ...]] = _SCALARS_F + _SCALARS_I + _ARRAYS

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._sigma = two_sided_quantile(self.config["threshold"])
        # the state (_SCALARS_F, _SCALARS_I, _ARRAYS); values are halved, so differences stay finite
        self._level = self._level_std = self._offset = self._season_std = 0.0
        self._lo = self._hi = self._bin_mean = self._sustained = self._usual = self._peak = 0.0
        self._count = self._season_n = self._first_ts = self._last_ts = self._min_gap = 0
        self._bin_ms = self._bin = self._bin_n = self._sustained_n = self._rest = self._run = 0
        self._profile = np.full(DAY_BINS, np.nan)  # halved values; NaN: a bin not seen yet
        self._yesterday = np.full(DAY_BINS, np.nan)
        self._week = np.full(WEEK_BINS, np.nan)

    @property
    def count(self) -> int:
        return self._count

    # -- scoring -----------------------------------------------------------------------------
    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        out = _Columns(1)
        self._run_points([ts_ms], [value], out, 0)
        return out.batch(np.array([value])).result(0)

    def update_batch(self, ts_ms: np.ndarray, values: np.ndarray) -> BatchResult:
        values = _finite(values, self.name)
        out = _Columns(len(values))
        self._run_points(np.asarray(ts_ms, dtype=np.int64).tolist(), values.tolist(), out, 0)
        return out.batch(values)

    @classmethod
    def update_many(
        cls, states: list[bytes | None], ts_ms: np.ndarray, values: np.ndarray, offsets: np.ndarray, **params: Any
    ) -> tuple[list[bytes], BatchResult]:
        """Many series: their states decoded and encoded as one matrix, each series' points run by the
        same loop as ``update_batch`` (the same bits)."""
        proto = cls(**params)
        layout = FixedStateLayout.of(proto.to_state())
        present = [blob for blob in states if blob is not None]
        decoded = layout.decode(present) if layout is not None and present else {}
        if layout is None or decoded is None:
            return super().update_many(states, ts_ms, values, offsets, **params)
        values = _finite(values, cls.name)
        fresh = proto._get_state()
        columns = {k: np.repeat(np.asarray(fresh[k])[None, ...], len(states), axis=0) for k in cls._FIELDS}
        have = np.array([blob is not None for blob in states], dtype=bool)
        if present:
            for key in cls._FIELDS:
                columns[key][have] = decoded[key]
        out = _Columns(len(values))
        xs, ts, bounds = values.tolist(), np.asarray(ts_ms, dtype=np.int64).tolist(), np.asarray(offsets).tolist()
        scalars = _SCALARS_F + _SCALARS_I
        for k in range(len(states)):
            # the profile arrays are views of the columns: the loop updates them in place
            proto._set_state({key: columns[key][k] for key in cls._FIELDS}, cls.state_version, views=True)
            lo, hi = bounds[k], bounds[k + 1]
            proto._run_points(ts[lo:hi], xs[lo:hi], out, lo)
            for key in scalars:
                columns[key][k] = getattr(proto, "_" + key)
        return layout.encode(columns, len(states)), out.batch(values)

    def _run_points(self, ts_list: list[int], xs: list[float], out: _Columns, first: int) -> None:
        """Score and learn the points in order; point ``i`` is written at ``first + i`` of ``out``."""
        for i, (t, x) in enumerate(zip(ts_list, xs, strict=True)):
            h = x * 0.5  # halved: differences of any two finite values stay finite
            if self._count == 0:
                self._start(t, h)
                continue
            if self._count < WARMUP:
                self._learn_interval(t)
            self._last_ts = t
            if self._count >= WARMUP:
                self._score(t, h, out, first + i)
            self._learn(t, h)

    def _start(self, t: int, h: float) -> None:
        self._level = self._lo = self._hi = h
        self._first_ts = self._last_ts = t
        self._count = 1

    def _learn_interval(self, t: int) -> None:
        gap = t - self._last_ts
        if gap > 0:
            self._min_gap = gap if self._min_gap == 0 else min(self._min_gap, gap)
        if self._count == WARMUP - 1:  # fixed from here on
            self._bin_ms = _bin_for(self._min_gap)
            self._bin = -1

    def _score(self, t: int, h: float, out: _Columns, j: int) -> None:
        scale = max(self._level_std, TINY)
        center = self._level
        z = abs(h - center) / scale
        by = "level"
        bin_ms = self._bin_ms
        ratio = 0.0
        if bin_ms > 0:
            k = t // bin_ms
            usual = float(self._profile[k % (DAY_MS // bin_ms)])
            # the profile knows this bin (not NaN) and the seasonal scale rests on WARMUP residuals
            if usual == usual and self._season_n >= WARMUP and SEASONAL_FORECAST:
                season_scale = max(self._season_std, TINY)
                z2 = abs(h - (usual + self._offset)) / season_scale
                if (season_scale < scale) if FORECAST_CHOICE == "better" else (z2 < z):
                    z, center, scale, by = z2, usual + self._offset, season_scale, "seasonal"
            ratio = self._sustained_ratio(t, h, k)
        z = min(z, FLOAT_MAX)
        sigma, kind, point_by = z, "", by
        width = self._hi - self._lo
        excess = (h - self._hi) if h > self._hi else (self._lo - h) if h < self._lo else 0.0
        if excess > 0.0 and width > 0.0 and z >= NOVELTY_MIN_SIGMA and t - self._first_ts >= NOVELTY_AFTER_MS:
            sigma = min(z + NOVELTY_SIGMA + NOVELTY_GAIN * min(excess / width, 1e300), FLOAT_MAX)
            kind, by = "new_range", "range"
        elif ratio >= SUSTAINED_RATIO and NOVELTY_SIGMA + (ratio - SUSTAINED_RATIO) > z:
            sigma, kind, by = NOVELTY_SIGMA + (ratio - SUSTAINED_RATIO), "sustained", "seasonal"
        half_width = self._sigma * scale
        out.lower[j] = max(-FLOAT_MAX, (center - half_width) * 2.0) if half_width < FLOAT_MAX else -FLOAT_MAX
        out.upper[j] = min(FLOAT_MAX, (center + half_width) * 2.0) if half_width < FLOAT_MAX else FLOAT_MAX
        side = 1 if h > center else -1 if h < center else 0
        beyond = z > self._sigma
        self._run = (self._run + side if self._run * side > 0 else side) if beyond else 0
        self._run = max(-WARMUP, min(WARMUP, self._run))
        prob = two_sided_probability(sigma)
        jump = abs(self._run) == LEVEL_RUN  # the forecasts jump to the value after this point
        if self._rest != 0:  # resting after an alarm on the side of its sign: only the other side alarms
            resting_side = 1 if self._rest > 0 else -1
            self._rest -= resting_side
            if kind == "sustained":  # a stretch still unlike yesterday: part of the event that rests
                sigma, kind, by = z, "", point_by
                prob = two_sided_probability(sigma)
            if (side == resting_side or side == 0) and not (LEVEL_ALARM and jump):  # a jump: said once
                return
        out.prob[j] = prob
        if prob >= self.config["threshold"]:
            out.flag[j] = True
            self._rest = ALARM_REST * (side or 1)
            if jump:
                kind = "level_shift"
            elif not kind:
                kind = "level_shift" if abs(self._run) >= 2 else "spike" if side >= 0 else "dip"
            out.why[j] = explanation(kind, by, sigma=z, expected=(out.lower[j], out.upper[j]))

    def _sustained_ratio(self, t: int, h: float, k: int) -> float:
        """The mean seasonal residual against its usual level (learning both); 0 while it does not score."""
        per_day = DAY_MS // self._bin_ms
        a, b = float(self._yesterday[k % per_day]), float(self._week[k % (7 * per_day)])
        if a != a and b != b:
            return 0.0
        residual = min(abs(h - a) if a == a else math.inf, abs(h - b) if b == b else math.inf)
        residual = min(residual, FLOAT_MAX)
        n = min(self._sustained_n + 1, 1 << 40)  # plain means until the spans are reached
        w = max(2.0 / (SUSTAINED_SPAN + 1.0), 1.0 / n)
        self._sustained = (1.0 - w) * self._sustained + w * residual
        ratio = 0.0
        if n > 1 and t - self._first_ts >= SUSTAINED_DAYS * DAY_MS and self._usual > 0.0:
            ratio = min(self._sustained / self._usual, 1e300)
        # only a new high of the ratio (its recent highs decay) is news: one change, one alarm
        news = ratio if ratio > self._peak else 0.0
        self._peak = max(ratio, self._peak * PEAK_DECAY)
        u = max(2.0 / (USUAL_SPAN + 1.0), 1.0 / n)
        self._usual = (1.0 - u) * self._usual + u * self._sustained
        self._sustained_n = n
        return news

    # -- learning ----------------------------------------------------------------------------
    def _learn(self, t: int, h: float) -> None:
        b = 2.0 / (SCALE_SPAN + 1.0)
        residual = h - self._level
        scale = max(self._level_std, TINY)
        residual_c = max(-CLIP * scale, min(CLIP * scale, residual)) if self._count >= WARMUP else residual
        self._level_std = _ew_rms(self._level_std, residual, _weight(b, self._count))
        self._level += (2.0 / (LEVEL_SPAN + 1.0)) * residual_c
        shifted = abs(self._run) >= LEVEL_RUN
        if shifted:
            self._level = h
        if self._bin_ms > 0 and self._count >= WARMUP:
            self._learn_season(t, h, b, shifted)
        self._lo, self._hi = min(self._lo, h), max(self._hi, h)
        self._count = min(self._count + 1, 1 << 40)

    def _learn_season(self, t: int, h: float, b: float, shifted: bool) -> None:
        bin_ms = self._bin_ms
        per_day = DAY_MS // bin_ms
        k = t // bin_ms
        usual = float(self._profile[k % per_day])
        if usual == usual:
            residual = h - (usual + self._offset)
            limit = CLIP * max(self._season_std, TINY) if self._season_n > 0 else math.inf
            clipped = max(-limit, min(limit, residual))
            self._season_n = min(self._season_n + 1, 1 << 40)
            self._season_std = _ew_rms(self._season_std, residual, _weight(b, self._season_n))
            self._offset += (2.0 / (OFFSET_SPAN + 1.0)) * clipped
            if shifted:
                self._offset = h - usual
        if k != self._bin:
            if self._bin >= 0 and self._bin_n > 0:
                self._close_bin(self._bin, per_day)
            self._bin, self._bin_mean, self._bin_n = k, 0.0, 0
        self._bin_n += 1
        self._bin_mean += (h - self._bin_mean) / self._bin_n  # a running mean: no sum to overflow

    def _close_bin(self, k: int, per_day: int) -> None:
        mean = self._bin_mean
        slot = k % per_day
        old = float(self._profile[slot])
        shape = mean - self._offset if PROFILE_NET else mean
        self._profile[slot] = shape if old != old else (1.0 - PROFILE_WEIGHT) * old + PROFILE_WEIGHT * shape
        self._yesterday[slot] = mean
        self._week[k % (7 * per_day)] = mean

    # -- state -------------------------------------------------------------------------------
    def max_state_bytes(self) -> int:
        return 24_000

    def _get_state(self) -> dict[str, Any]:
        return {k: getattr(self, "_" + k) for k in _SCALARS_F + _SCALARS_I + _ARRAYS}

    def _set_state(self, state: dict[str, Any], version: int, views: bool = False) -> None:
        """Restore the fields; ``views``: keep the given arrays themselves (update_many's columns)."""
        if version < 7:
            raise StateError(
                f"{self.name}: stored state has version {version}, written by the earlier default detector "
                "(CAD-based); start from a new checkpoint"
            )
        try:
            for key in _SCALARS_F:
                setattr(self, "_" + key, float(state[key]))
            for key in _SCALARS_I:
                setattr(self, "_" + key, int(state[key]))
            arrays = {key: np.array(state[key], dtype=np.float64, copy=not views) for key in _ARRAYS}
        except KeyError as err:
            raise StateError(f"{self.name}: stored state lacks field {err}") from None
        sizes = {"profile": DAY_BINS, "yesterday": DAY_BINS, "week": WEEK_BINS}
        bad = [k for k, v in arrays.items() if v.shape != (sizes[k],)]
        if bad or self._count < 0 or self._bin_ms not in (0, *BINS_MS) or not math.isfinite(self._level_std):
            raise StateError(f"{self.name}: stored state is inconsistent (fields {bad or 'scalars'})")
        for key, arr in arrays.items():
            setattr(self, "_" + key, arr)


def _weight(b: float, n: int) -> float:
    """The weight of the ``n``-th residual in a scale: the plain mean of the first ``WARMUP``, which then
    weighs as ``SCALE_PRIOR`` residuals (one outlier in a young stream must not swamp the scale), and ``b``
    once the span is reached."""
    return 1.0 / n if n <= WARMUP else max(b, 1.0 / (n + SCALE_PRIOR))


def _ew_rms(rms: float, residual: float, w: float) -> float:
    """The weighted root mean square after one more residual of weight ``w`` (``1 / n`` for the first
    ``n`` residuals, so a young stream's scale is their plain RMS), without squaring overflow."""
    return min(math.hypot(math.sqrt(1.0 - w) * rms, math.sqrt(w) * residual), FLOAT_MAX)


def _finite(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise NonFiniteValueError(f"{name}: values must be finite")
    return values


class _Columns:
    """The result columns a run of points fills; unscored points keep no band, 0 and no alarm."""

    def __init__(self, n: int) -> None:
        self.lower = [math.nan] * n
        self.upper = [math.nan] * n
        self.prob = [0.0] * n
        self.flag = [False] * n
        self.why: list[str | None] = [None] * n

    def batch(self, values: np.ndarray) -> BatchResult:
        why = np.empty(len(self.why), dtype=object)
        why[:] = self.why
        return BatchResult(
            np.array(self.lower, dtype=np.float64),
            np.array(self.upper, dtype=np.float64),
            np.array(self.prob, dtype=np.float64),
            np.array(self.flag, dtype=bool),
            why,
        )
