"""The Numenta Anomaly Benchmark (NAB) score, written from its published description.

Sources (facts only; no NAB code is used): Lavin & Ahmad, "Evaluating Real-time
Anomaly Detection Algorithms - the Numenta Anomaly Benchmark" (ICMLA 2015), and
NAB's documented scoring rules. The rules, as implemented here:

* **Probationary period.** The first ``floor(0.15 * rows)`` records of every series,
  capped at ``0.15 * 5000 = 750`` records, are for learning: detections there are
  ignored. Windows there still count (they can only be missed).
* **Windows.** Each labelled anomaly is a window ``[start, end]`` of timestamps,
  both ends included. A record is inside a window when ``start <= ts <= end``.
* **Scaled sigmoid.** ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` (and ``-1`` for
  ``y > 3``). Inside a window of ``w`` records ending at row ``R``, the record at
  row ``i`` sits at ``y = -(R - i + 1) / w`` (``-1`` at the window's first record,
  ``-1/w`` at its last). Its reward is ``A_TP * sigma(y) / sigma(-1)``: an alarm on
  the first record of a window earns exactly ``A_TP``, later ones earn less.
* **True positives.** Only the best (= earliest) alarm inside a window counts; the
  other alarms in that window neither earn nor cost anything.
* **False positives.** An alarm outside every window costs ``A_FP * sigma(y)``
  (``sigma`` is negative there) with ``y = (i - R) / (w - 1)`` measured from the
  end ``R`` of the preceding window of ``w`` records: alarms just after a window
  are nearly free, alarms far after it (and before the first window) cost ``A_FP``.
* **False negatives.** Every window without an alarm costs ``A_FN``.
* **Profiles.** ``A_TP``, ``A_FP``, ``A_FN`` come from an application profile
  (NAB's ``config/profiles.json``); :data:`STANDARD_PROFILES` holds NAB's three.
* **Threshold.** A record is an alarm when its anomaly score is ``>= threshold``.
  Per profile one threshold is chosen for the whole corpus, the one maximising the
  summed raw score. :func:`optimize_threshold` evaluates *every* distinct score
  (an exact sweep in ``O(n log n)``), plus "no alarm at all".
* **Normalisation.** ``100 * (raw - null) / (perfect - null)``, where the null
  detector (no alarm) scores ``-A_FN * windows`` and the perfect detector (an alarm
  on the first record of every window, nothing else) scores ``A_TP * windows``.

>>> day = 86_400_000
>>> ts = [i * day for i in range(100)]
>>> scores = [0.0] * 100
>>> scores[60] = 0.9                      # an alarm on the first record of the window
>>> table = score_corpus({"s.csv": SeriesScores(ts, scores)}, {"s.csv": [(60 * day, 69 * day)]})
>>> table["standard"].score, table["standard"].threshold
(100.0, 0.9)
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

PROBATION_PERCENT = 0.15
PROBATION_MAX_ROWS = 5000  # the percentage applies to at most this many rows (0.15 -> 750)

NO_ALARM = math.inf
"""The threshold reported when raising no alarm at all scores best."""


# -- profiles --------------------------------------------------------------------------
@dataclass(frozen=True)
class CostMatrix:
    """An application profile's weights (NAB names: tpWeight, fpWeight, fnWeight, tnWeight)."""

    tp_weight: float
    fp_weight: float
    fn_weight: float
    tn_weight: float = 1.0  # part of NAB's profiles; true negatives are not scored

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CostMatrix:
        """From ``{"CostMatrix": {"tpWeight": ..}}`` or directly ``{"tpWeight": ..}``."""
        matrix = data.get("CostMatrix", data)
        try:
            return cls(
                float(matrix["tpWeight"]),
                float(matrix["fpWeight"]),
                float(matrix["fnWeight"]),
                float(matrix.get("tnWeight", 1.0)),
            )
        except KeyError as err:
            raise ValueError(f"profile lacks {err.args[0]!r}; needs tpWeight, fpWeight, fnWeight") from None


STANDARD_PROFILES: dict[str, CostMatrix] = {
    "standard": CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": CostMatrix(tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "reward_low_FN_rate": CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}
"""NAB's three application profiles (``config/profiles.json`` of NAB)."""


def load_profiles(path: str | Path) -> dict[str, CostMatrix]:
    """Profiles from a NAB-style ``profiles.json``."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object of profiles")
    out = {}
    for name, body in data.items():
        try:
            out[name] = CostMatrix.from_mapping(body)
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: profile {name!r}: {err}") from None
    return out


# -- timestamps and windows --------------------------------------------------------------
def to_epoch_ms(ts: Any) -> int:
    """Epoch milliseconds from an ISO timestamp string (naive = UTC), a datetime or a number.

    Integers (or integer strings) are taken as epoch milliseconds already.

    >>> to_epoch_ms("1970-01-02 00:00:00.000000"), to_epoch_ms("1970-01-02 00:00:00"), to_epoch_ms("5")
    (86400000, 86400000, 5)
    """
    if isinstance(ts, bool):
        raise ValueError(f"not a timestamp: {ts!r}")
    if isinstance(ts, (int, float)):
        return int(ts)
    if isinstance(ts, datetime):
        dt = ts
    else:
        text = str(ts).strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not a timestamp: {ts!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return round(dt.timestamp() * 1000)


Windows = Mapping[str, Sequence[tuple[Any, Any]]]


def load_windows(path: str | Path) -> dict[str, list[tuple[int, int]]]:
    """NAB's ``combined_windows.json``: series key -> [(start_ms, end_ms), ...]."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of series -> windows")
    out = {}
    for key, windows in data.items():
        try:
            out[key] = [(to_epoch_ms(start), to_epoch_ms(end)) for start, end in windows]
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {key}: bad window list: {err}") from None
    return out


# -- per-series preparation --------------------------------------------------------------
@dataclass(frozen=True)
class SeriesScores:
    """One series' detector output: timestamps (anything :func:`to_epoch_ms` reads) and scores."""

    timestamps: Sequence[Any]
    scores: Sequence[float]


def probation_length(n_rows: int, percent: float = PROBATION_PERCENT) -> int:
    """Records at the start of a series whose alarms are ignored.

    >>> probation_length(4032), probation_length(22695), probation_length(10)
    (604, 750, 1)
    """
    return int(min(math.floor(percent * n_rows), percent * PROBATION_MAX_ROWS))


def scaled_sigmoid(y: float) -> float:
    """NAB's scaled sigmoid: +0.987 at y=-1 (window start), 0 at y=0, -1 far after a window.

    >>> round(scaled_sigmoid(-1.0), 4), scaled_sigmoid(0.0), scaled_sigmoid(3.5)
    (0.9866, 0.0, -1.0)
    """
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


_SIGMA_START = scaled_sigmoid(-1.0)


@dataclass(frozen=True)
class PreparedSeries:
    """A series reduced to what scoring needs, independent of profile and threshold.

    For every record after the probationary period: its anomaly score, the window it
    lies in (-1 if none) and its unweighted value: the TP reward in ``(0, 1]`` inside a
    window (to be multiplied by ``A_TP``), the FP cost in ``[-1, 0)`` outside (times
    ``A_FP``).
    """

    name: str
    n_rows: int
    probation: int
    window_rows: tuple[tuple[int, int], ...]  # first and last row of each window
    scores: tuple[float, ...]
    window_of: tuple[int, ...]
    value: tuple[float, ...]

    @property
    def n_windows(self) -> int:
        return len(self.window_rows)


def _row_bounds(ts_ms: Sequence[int], windows: Sequence[tuple[int, int]], name: str) -> list[tuple[int, int]]:
    """First and last row (in file order) of each window, windows sorted by start.

    Membership is by timestamp (``start <= ts <= end``), so a series whose timestamps
    step back somewhere (NAB's machine_temperature does, once) is still scored in
    file order, as NAB does.
    """
    ordered = sorted(windows)
    for (_, e0), (s1, _) in pairwise(ordered):
        if s1 <= e0:
            raise ValueError(f"{name}: windows overlap")
    for start, end in ordered:
        if end < start:
            raise ValueError(f"{name}: window ends before it starts: {start}..{end}")
    starts = [s for s, _ in ordered]
    lo = [-1] * len(ordered)
    hi = [-2] * len(ordered)
    for i, t in enumerate(ts_ms):
        k = bisect_right(starts, t) - 1
        if k >= 0 and t <= ordered[k][1]:
            if lo[k] < 0:
                lo[k] = i
            hi[k] = i
    # A window holding no record can never be detected; it still counts in the window
    # total (and so in the perfect score), as a certain false negative.
    return list(zip(lo, hi, strict=True))


def prepare_series(
    name: str,
    series: SeriesScores,
    windows: Sequence[tuple[Any, Any]],
    probation_percent: float = PROBATION_PERCENT,
) -> PreparedSeries:
    """Locate the windows in the series and give every scored record its unweighted value."""
    ts_ms = [to_epoch_ms(t) for t in series.timestamps]
    scores = [float(s) for s in series.scores]
    if len(ts_ms) != len(scores):
        raise ValueError(f"{name}: {len(ts_ms)} timestamps but {len(scores)} scores")
    bad = next((s for s in scores if not math.isfinite(s)), None)
    if bad is not None:
        raise ValueError(f"{name}: anomaly scores must be finite, got {bad}")
    bounds = _row_bounds(ts_ms, [(to_epoch_ms(a), to_epoch_ms(b)) for a, b in windows], name)

    n = len(scores)
    probation = probation_length(n, probation_percent)
    window_of = [-1] * n
    value = [-1.0] * n  # before the first window: full FP cost
    present = [(k, lo, hi) for k, (lo, hi) in enumerate(bounds) if lo >= 0]
    for j, (k, lo, hi) in enumerate(present):
        width = hi - lo + 1
        for i in range(lo, hi + 1):
            window_of[i] = k
            value[i] = scaled_sigmoid(-(hi - i + 1) / width) / _SIGMA_START
        # Records after the window, up to the next one, are false positives whose cost
        # grows with the distance from this window's end.
        stop = present[j + 1][1] if j + 1 < len(present) else n
        span = max(width - 1, 1)
        for i in range(hi + 1, stop):
            value[i] = scaled_sigmoid((i - hi) / span)
    return PreparedSeries(
        name=name,
        n_rows=n,
        probation=probation,
        window_rows=tuple(bounds),
        scores=tuple(scores[probation:]),
        window_of=tuple(window_of[probation:]),
        value=tuple(value[probation:]),
    )


# -- scoring -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesOutcome:
    """One series at one threshold: counts and raw score."""

    name: str
    tp: int
    fp: int
    fn: int
    raw: float


def score_series(prep: PreparedSeries, threshold: float, cost: CostMatrix) -> SeriesOutcome:
    """Raw NAB score of one series when alarms are the records scoring ``>= threshold``."""
    best: dict[int, float] = {}
    fp_sum, fp = 0.0, 0
    for score, k, v in zip(prep.scores, prep.window_of, prep.value, strict=True):
        if score < threshold:
            continue
        if k < 0:
            fp_sum += cost.fp_weight * v
            fp += 1
        elif v > best.get(k, -math.inf):
            best[k] = v
    tp_sum = sum(cost.tp_weight * v for v in best.values())
    fn = prep.n_windows - len(best)
    return SeriesOutcome(prep.name, len(best), fp, fn, tp_sum + fp_sum - cost.fn_weight * fn)


def optimize_threshold(prepared: Sequence[PreparedSeries], cost: CostMatrix) -> tuple[float, float]:
    """The corpus-wide threshold with the best summed raw score, and that score.

    Exact: lowering the threshold past each distinct anomaly score adds that score's
    records as alarms, so the raw score is updated incrementally in one pass over the
    records sorted by score (numpy: each record's increment, then one running sum
    in that order, so the totals are the same floats as adding them one by one).
    Ties between thresholds go to the highest one. Returns ``(NO_ALARM, null
    score)`` when no threshold beats raising no alarm.
    """
    if not prepared:
        return NO_ALARM, 0.0
    scores = np.concatenate([np.asarray(p.scores, dtype=np.float64) for p in prepared])
    value = np.concatenate([np.asarray(p.value, dtype=np.float64) for p in prepared])
    window_parts, n_windows = [], 0
    for prep in prepared:
        w = np.asarray(prep.window_of, dtype=np.int64)
        window_parts.append(np.where(w >= 0, w + n_windows, -1))
        n_windows += prep.n_windows
    window = np.concatenate(window_parts)
    null = -cost.fn_weight * n_windows
    if len(scores) == 0:
        return NO_ALARM, null
    order = np.argsort(-scores, kind="stable")  # descending; equal scores keep file order
    s, w, v = scores[order], window[order], value[order]
    increment = np.where(w < 0, cost.fp_weight * v, 0.0)
    inside = np.flatnonzero(w >= 0)
    if len(inside):
        by_window = inside[np.argsort(w[inside], kind="stable")]  # each window's records in sweep order
        starts = np.flatnonzero(np.r_[True, np.diff(w[by_window]) != 0])
        for lo, hi in zip(starts.tolist(), np.r_[starts[1:], len(by_window)].tolist(), strict=True):
            rows = by_window[lo:hi]
            best = np.maximum.accumulate(v[rows])  # the window's best reward so far
            increment[rows[0]] = cost.fn_weight + cost.tp_weight * best[0]
            increment[rows[1:]] = cost.tp_weight * (best[1:] - best[:-1])  # 0.0 where no better
    total = np.cumsum(np.r_[null, increment])[1:]
    last_of_score = np.r_[s[1:] != s[:-1], True]  # evaluated once all records of a score are in
    candidates = np.where(last_of_score, total, -np.inf)
    k = int(np.argmax(candidates))
    if candidates[k] > null:
        return float(s[k]), float(candidates[k])
    return NO_ALARM, null


@dataclass(frozen=True)
class ProfileScore:
    """One profile's corpus result; ``score`` is the normalised NAB score."""

    profile: str
    threshold: float
    score: float
    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int
    per_series: tuple[SeriesOutcome, ...]


def normalize(raw: float, null: float, perfect: float) -> float:
    """``100 * (raw - null) / (perfect - null)``; NaN for a corpus without windows."""
    if perfect == null:
        return math.nan
    return 100.0 * (raw - null) / (perfect - null)


def prepare_corpus(
    scores_by_series: Mapping[str, SeriesScores],
    windows: Windows,
    probation_percent: float = PROBATION_PERCENT,
) -> list[PreparedSeries]:
    """Prepare every series; each must have an entry (possibly empty) in ``windows``."""
    missing = sorted(set(scores_by_series) - set(windows))
    if missing:
        raise KeyError(f"no windows for {len(missing)} series, e.g. {missing[0]!r}")
    return [
        prepare_series(name, scores_by_series[name], windows[name], probation_percent)
        for name in sorted(scores_by_series)
    ]


def score_prepared(prepared: Sequence[PreparedSeries], name: str, cost: CostMatrix) -> ProfileScore:
    """Optimise the threshold for one profile and report the corpus at that threshold."""
    threshold, raw = optimize_threshold(prepared, cost)
    outcomes = tuple(score_series(p, threshold, cost) for p in prepared)
    n_windows = sum(p.n_windows for p in prepared)
    null, perfect = -cost.fn_weight * n_windows, cost.tp_weight * n_windows
    return ProfileScore(
        profile=name,
        threshold=threshold,
        score=normalize(raw, null, perfect),
        raw=raw,
        null=null,
        perfect=perfect,
        tp=sum(o.tp for o in outcomes),
        fp=sum(o.fp for o in outcomes),
        fn=sum(o.fn for o in outcomes),
        per_series=outcomes,
    )


def score_corpus(
    scores_by_series: Mapping[str, SeriesScores],
    windows: Windows,
    profiles: Mapping[str, CostMatrix] | None = None,
    probation_percent: float = PROBATION_PERCENT,
) -> dict[str, ProfileScore]:
    """NAB score of a corpus for each profile (default: NAB's three).

    ``scores_by_series`` maps a series key to its scores; ``windows`` maps the same
    keys to ``[(start, end), ...]`` (epoch ms or timestamp strings, ends included).
    """
    prepared = prepare_corpus(scores_by_series, windows, probation_percent)
    profiles = STANDARD_PROFILES if profiles is None else profiles
    return {name: score_prepared(prepared, name, cost) for name, cost in profiles.items()}


def format_table(results: Mapping[str, ProfileScore] | Iterable[ProfileScore]) -> str:
    """A plain-text table: profile, threshold, normalised score, raw score, TP/FP/FN."""
    rows = list(results.values()) if isinstance(results, Mapping) else list(results)
    header = f"{'profile':<20} {'threshold':>10} {'score':>8} {'raw':>9} {'TP':>5} {'FP':>6} {'FN':>5}"
    lines = [header, "-" * len(header)]
    for r in rows:
        thr = "no alarm" if r.threshold == NO_ALARM else f"{r.threshold:.6g}"
        lines.append(f"{r.profile:<20} {thr:>10} {r.score:>8.2f} {r.raw:>9.3f} {r.tp:>5} {r.fp:>6} {r.fn:>5}")
    return "\n".join(lines)
