"""Tests of detectors.cad (CAD OSE)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from detectors.base import AnomalyResult
from detectors.cad import CADDetector
from detectors.params import ParamError
from detectors.registry import build_detector

NAB = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "nab"
NAB_PARAMS = {
    "base_threshold": 0.75,
    "max_left_semi_contexts_length": 7,
    "max_active_neurons_num": 15,
    "num_norm_value_bits": 3,
}


def nab_detector(values: np.ndarray) -> CADDetector:
    probation = min(math.floor(0.15 * len(values)), 0.15 * 5000)
    return CADDetector(
        min_value=float(values.min()),
        max_value=float(values.max()),
        rest_period=int(probation / 5.0),
        **NAB_PARAMS,
    )


def series(n: int = 3000, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    x = 10 + 5 * np.sin(2 * np.pi * t / 48) + rng.normal(0, 0.8, n)
    x[2000:2010] += 12
    return x


def scores(det: CADDetector, values: np.ndarray, start: int = 0) -> np.ndarray:
    return det.update_batch(np.arange(start, start + len(values)) * 60_000, values).anomaly_probability


@pytest.mark.parametrize(
    "key",
    [
        "realTraffic/speed_7578.csv",
        "realAdExchange/exchange-3_cpm_results.csv",
        "realKnownCause/rogue_agent_key_hold.csv",
    ],
)
def test_matches_published_contextose_scores(key: str) -> None:
    data = NAB / "data" / key
    folder, name = key.split("/")
    ref_path = NAB / "reference_results" / "contextOSE" / folder / f"contextOSE_{name}"
    if not (data.exists() and ref_path.exists()):
        pytest.skip(f"NAB data not available at {NAB} (shared data directory absent)")
    pd = pytest.importorskip("pandas")
    values = pd.read_csv(data)["value"].to_numpy(dtype=np.float64)
    ref = pd.read_csv(ref_path)["anomaly_score"].to_numpy()
    ours = scores(nab_detector(values), values)
    assert np.abs(ours - ref).max() < 1e-9


# Round trips (fixed and online range, mid warm-up), foreign and garbage states, batch ==
# update and single-parameter validation: detectors.checks (tests/detectors/test_checks.py).


def test_state_size_is_bounded_by_max_contexts() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 3000)  # pure noise: the worst case for context growth
    capped = CADDetector(min_value=0.0, max_value=1.0, max_contexts=2000)
    s = scores(capped, x)
    assert capped.context_count <= 2000
    assert np.all((s >= 0) & (s <= 1))
    blob = capped.to_state()
    assert len(blob) < 2000 * 64 < capped.max_state_bytes()
    restored = CADDetector.from_state(blob, min_value=0.0, max_value=1.0, max_contexts=2000)
    more = rng.uniform(0, 1, 300)
    np.testing.assert_array_equal(scores(restored, more, 3000), scores(capped, more, 3000))


def test_cap_does_not_change_results_below_it() -> None:
    x = series(1500)
    a = scores(CADDetector(min_value=0.0, max_value=25.0), x)
    b = scores(CADDetector(min_value=0.0, max_value=25.0, max_contexts=100_000_000), x)
    np.testing.assert_array_equal(a, b)


def test_out_of_range_values_are_clamped() -> None:
    det = CADDetector(min_value=0.0, max_value=10.0, rest_period=5)
    twin = CADDetector(min_value=0.0, max_value=10.0, rest_period=5)
    for i, v in enumerate([1.0, 5.0, 9.0] * 20):
        det.update(i, v)
        twin.update(i, v)
    for i, (v, clamped) in enumerate([(-1e9, 0.0), (1e9, 10.0), (11.0, 10.0), (-0.5, 0.0)]):
        r, r2 = det.update(100 + i, v), twin.update(100 + i, clamped)
        assert r == r2
        assert r.value_lower_limit is None and r.value_upper_limit is None
        assert 0.0 <= r.anomaly_probability <= 1.0


def test_online_range_warmup_and_widening() -> None:
    det = CADDetector(rest_period=10)
    results = [det.update(i, v) for i, v in enumerate(series(400))]
    assert all(r == AnomalyResult.warming_up() for r in results[:9])
    assert all(0.0 <= r.anomaly_probability <= 1.0 for r in results)
    (lo, hi), widenings = det.value_range, det._widenings
    det.update(400, hi + 100.0)
    assert det.value_range[1] > hi + 100.0 and det.value_range[0] == lo and det._widenings == widenings + 1
    det.update(401, hi + 100.0)  # inside the widened range now
    assert det._widenings == widenings + 1


def test_flat_range_and_is_anomaly_threshold() -> None:
    a = CADDetector(min_value=3.0, max_value=3.0, rest_period=2, threshold=0.5)
    b = CADDetector(min_value=3.0, max_value=3.0, rest_period=2, threshold=0.5)
    out_a = [a.update(i, v) for i, v in enumerate([3.0] * 50 + [7.0, -1.0])]  # flat range: one code
    out_b = [b.update(i, 3.0) for i in range(52)]
    assert out_a == out_b
    r = CADDetector(min_value=0.0, max_value=1.0, rest_period=1, threshold=0.0).update(0, 0.3)
    assert r.is_anomaly  # score 0.0 >= threshold 0.0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"min_value": 1.0}, "max_value"),
        ({"max_value": 1.0}, "min_value"),
        ({"min_value": 2.0, "max_value": 1.0}, "max_value"),
        ({"min_value": float("nan"), "max_value": 1.0}, "min_value"),
    ],
)
def test_parameter_cross_checks(params: dict, field: str) -> None:
    # one bad value per parameter is detectors.checks.check_param_schema's; these involve two
    with pytest.raises(ParamError) as err:
        CADDetector(**params)
    assert err.value.field == field


def test_registry_builds_cad_with_defaults() -> None:
    det = build_detector("cad", {})
    assert isinstance(det, CADDetector)
    assert det.config["threshold"] == 0.95 and det.config["rest_period"] == 30
    assert det.config["max_left_semi_contexts_length"] == 8 and det.config["max_active_neurons_num"] == 16
    assert det.config["num_norm_value_bits"] == 3 and det.config["min_value"] is None


def test_rejects_nan() -> None:
    det = CADDetector(min_value=0.0, max_value=25.0, rest_period=10)
    det.update_batch(np.arange(30), series(30))
    before = det.to_state()
    with pytest.raises(ValueError):
        det.update(31, float("nan"))
    assert det.to_state() == before
