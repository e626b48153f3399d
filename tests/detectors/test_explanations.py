"""Explanations (detectors.explain): one synthetic series per kind, the column's default, the
band detectors' and CAD's explanations, batch == point by point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detectors.base import AnomalyResult, BatchResult
from detectors.cad import CADDetector
from detectors.default import DefaultDetector
from detectors.ema import EMADetector
from detectors.explain import KINDS, explanation
from detectors.robust import RobustDetector


def _base(n: int, seed: int = 0) -> np.ndarray:
    """100 + a 4-hour cycle of +-10 (5-minute points) + N(0, 1) noise."""
    rng = np.random.default_rng(seed)
    return 100 + 10 * np.sin(2 * np.pi * np.arange(n) / 48) + rng.normal(0, 1, n)


def _alarms(det, values: np.ndarray, step_ms: int = 300_000) -> dict[int, dict]:
    out = det.update_batch(np.arange(len(values), dtype=np.int64) * step_ms, values)
    assert all((e is None) != bool(a) for e, a in zip(out.explanation, out.is_anomaly, strict=True))
    return {i: json.loads(out.explanation[i]) for i in np.flatnonzero(out.is_anomaly)}


def _daily(n: int, seed: int = 0) -> np.ndarray:
    """100 + a daily cycle of +-10 (5-minute points) + N(0, 1) noise."""
    rng = np.random.default_rng(seed)
    return 100 + 10 * np.sin(2 * np.pi * np.arange(n) / 288) + rng.normal(0, 1, n)


def _series_for(kind: str) -> tuple[np.ndarray, int]:
    """A series whose anomaly at the returned index is explained as ``kind`` by ``default``."""
    v = _daily(8 * 288)
    peak, trough = 6 * 288 + 72, 6 * 288 + 216  # day 7, its highest and lowest hour
    if kind == "spike":
        v[trough] += 15  # above the band, inside the range of the values seen
        return v, trough
    if kind == "dip":
        v[peak] -= 15
    elif kind == "new_range":
        v[peak] += 1000  # far beyond anything seen
    elif kind == "level_shift":
        v[trough:] += 15  # a step that stays: after a few points the forecasts jump to it, and say so
        return v, trough
    elif kind == "sustained":  # the daily rise fades away over two hours: no value beyond the day's range
        stretch = np.arange(peak - 48, peak + 48)
        fade = np.clip((stretch - stretch[0]) / 24, 0, 1)
        v[stretch] = 100 + (1 - fade) * (v[stretch] - 100)
        return v, int(stretch[0])
    return v, peak


DEFAULT_KINDS = [k for k in KINDS if k != "pattern"]  # new shapes are CAD's (test_cad_explains_pattern)


@pytest.mark.parametrize("kind", DEFAULT_KINDS)
def test_default_explains_each_kind(kind: str) -> None:
    values, start = _series_for(kind)
    alarms = _alarms(DefaultDetector(), values)
    assert min(alarms) >= start, f"false alarm before the anomaly: {alarms}"
    at = next((i for i in sorted(alarms) if alarms[i]["kind"] == kind), None)
    assert at is not None and at < start + 100, f"no {kind} among {alarms}"
    why = alarms[at]
    assert list(why) == ["kind", "sigma", "expected", "by"]
    lo, hi = why["expected"]
    assert lo < hi
    assert why["by"] in {"level", "seasonal", "range"}
    if kind == "sustained":  # unlike the same time yesterday and a week ago, for hours
        assert why["by"] == "seasonal"
    if kind in ("spike", "new_range", "level_shift"):
        assert values[at] > hi and why["sigma"] > 2
    if kind == "dip":
        assert values[at] < lo


def test_clean_series_has_no_explanations() -> None:
    assert _alarms(DefaultDetector(), _daily(8 * 288)) == {}


@pytest.mark.parametrize("cls", [EMADetector, RobustDetector])
def test_band_detectors_explain_spikes_and_dips(cls) -> None:
    v = _base(400)
    v[300] += 40
    v[350] -= 120  # well beyond the spike: the spike raised both detectors' spread floors
    alarms = _alarms(cls(), v)
    assert alarms[300]["kind"] == "spike" and alarms[350]["kind"] == "dip"
    for i, why in alarms.items():
        lo, hi = why["expected"]
        assert why["by"] == cls.name and not lo <= v[i] <= hi
    # point by point gives the same explanations as the batch path
    det = cls()
    point = [det.update(i * 300_000, float(x)).explanation for i, x in enumerate(v)]
    assert point == [None if i not in alarms else explanation(**_kw(alarms[i])) for i in range(len(v))]


def _kw(why: dict) -> dict:
    return {"kind": why["kind"], "by": why["by"], "sigma": why["sigma"], "expected": why["expected"]}


def test_cad_explains_pattern() -> None:
    v = np.tile([1.0, 5.0, 9.0, 5.0], 100)
    v[300:304] = [9.0, 1.0, 9.0, 1.0]
    alarms = _alarms(CADDetector(min_value=0.0, max_value=10.0, rest_period=5, threshold=0.5), v)
    assert alarms and all(w == {"kind": "pattern", "sigma": None, "expected": None, "by": "cad"}
                          for w in alarms.values())


def test_result_defaults_keep_old_constructors() -> None:
    batch = BatchResult(np.zeros(3), np.ones(3), np.zeros(3), np.zeros(3, dtype=bool))
    assert batch.explanation is not None and batch.explanation.dtype == object
    assert list(batch.explanation) == [None, None, None]
    assert batch.result(1) == AnomalyResult(0.0, 1.0, 0.0, False)
    assert AnomalyResult(None, None, 0.0, False).explanation is None
    with pytest.raises(ValueError, match="unknown explanation kind"):
        explanation("weird", "x")
