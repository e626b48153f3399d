"""Contract tests of ema, robust and likelihood beyond detectors.checks' suite.

The suite (batch == point by point, round trips, StateError on foreign state,
schema) runs here with small parameters; on top of it: NaN/inf rejected without
touching the state, explicit warm-up, and (hypothesis) any finite sequence -
1e308, subnormals, -0.0 - gives valid results, in batch as point by point.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import AnomalyResult, NonFiniteValueError, build_detector, get_detector_class
from detectors.checks import check_detector

FMAX = sys.float_info.max

# Small parameters so every phase (warm-up, full window, likelihood fit and
# re-fit, ring wrap) is reached within a few dozen points.
CASES = {
    "ema": ("ema", {"window": 8, "warmup": 3}),
    "robust": ("robust", {"window": 7, "warmup": 3}),
    "robust_even": ("robust", {"window": 6, "warmup": 4}),
    # thresholds beyond 1 - 1e-9 live on the graded part of the probability scale
    "ema_graded": ("ema", {"window": 8, "warmup": 3, "threshold": 1.0 - 5e-10}),
    "robust_graded": ("robust", {"window": 7, "warmup": 3, "threshold": 1.0 - 2e-10}),
    "likelihood": (
        "likelihood",
        {
            "base": "ema",
            "base_params": {"window": 8, "warmup": 3},
            "learning_period": 4,
            "estimation_samples": 8,
            "historic_window_size": 15,
            "reestimation_period": 5,
            "averaging_window": 3,
        },
    ),
    "likelihood_robust": (
        "likelihood",
        {
            "base": "robust",
            "base_params": {"window": 5, "warmup": 3},
            "learning_period": 3,
            "estimation_samples": 6,
            "historic_window_size": 10,
            "reestimation_period": 4,
            "averaging_window": 2,
            "log_scale": False,
            "threshold": 0.999,
        },
    ),
}
IDS = list(CASES)


def make(case: str):
    name, params = CASES[case]
    return build_detector(name, params)


def series(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = 100.0 + 5.0 * np.sin(np.arange(n) / 7.0) + rng.normal(0.0, 1.0, n)
    x[n // 3 :: 37] += 60.0  # some outliers
    x[n // 2 : n // 2 + 15] = 100.0  # a flat stretch
    return x


def check_valid(det, x: float, r: AnomalyResult) -> None:
    assert isinstance(r.is_anomaly, bool)
    assert 0.0 <= r.anomaly_probability < 1.0  # graded: never saturates at 1.0
    lo, hi = r.value_lower_limit, r.value_upper_limit
    assert (lo is None) == (hi is None)
    if lo is not None:
        assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi
    threshold = det.config["threshold"]
    assert r.is_anomaly == (r.anomaly_probability >= threshold)
    if det.name in ("ema", "robust") and lo is not None:
        assert r.is_anomaly == (x < lo or x > hi)
    if lo is None:
        assert r == AnomalyResult.warming_up()


def as_arrays(results: list[AnomalyResult]) -> tuple[np.ndarray, ...]:
    lo = np.array([np.nan if r.value_lower_limit is None else r.value_lower_limit for r in results])
    hi = np.array([np.nan if r.value_upper_limit is None else r.value_upper_limit for r in results])
    return (
        lo,
        hi,
        np.array([r.anomaly_probability for r in results]),
        np.array([r.is_anomaly for r in results]),
    )


def assert_batch_equal(batch, results: list[AnomalyResult]) -> None:
    lo, hi, prob, flag = as_arrays(results)
    # array_equal(equal_nan) is exact equality: no tolerance anywhere.
    assert np.array_equal(batch.value_lower_limit, lo, equal_nan=True)
    assert np.array_equal(batch.value_upper_limit, hi, equal_nan=True)
    assert np.array_equal(batch.anomaly_probability, prob)
    assert np.array_equal(batch.is_anomaly, flag)


@pytest.mark.parametrize("case", IDS)
def test_contract_suite_with_small_parameters(case: str) -> None:
    # round trips at several cuts, batch == update, versioned state, schema, bounds:
    # detectors.checks, here with parameters that reach every phase within 300 points
    name, params = CASES[case]
    check_detector(get_detector_class(name), params, series(300))
    assert make(case).update_batch(np.arange(300), series(300)).is_anomaly.any()  # the series exercises alarms


@pytest.mark.parametrize("case", IDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_rejected_and_state_untouched(case: str, bad: float) -> None:
    det = make(case)
    for i, v in enumerate(series(30)):
        det.update(i, v)
    before = det.to_state()
    with pytest.raises(NonFiniteValueError):
        det.update(30, bad)
    with pytest.raises(NonFiniteValueError):
        det.update_batch(np.arange(3), np.array([1.0, bad, 2.0]))
    assert det.to_state() == before


EXTREMES = [FMAX, -FMAX, 1e308, -1e308, 1e154, 5e-324, -5e-324, 2.2250738585072014e-308, 0.0, -0.0, 1e-300]
finite = st.floats(allow_nan=False, allow_infinity=False)
values_strategy = st.lists(st.one_of(finite, st.sampled_from(EXTREMES), st.just(1.0)), max_size=40)


@pytest.mark.parametrize("case", IDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=values_strategy)
def test_any_finite_sequence_gives_valid_results(case: str, values: list[float]) -> None:
    det, twin = make(case), make(case)
    results = [det.update(i, v) for i, v in enumerate(values)]
    for v, r in zip(values, results, strict=True):
        check_valid(det, v, r)
    batch = twin.update_batch(np.arange(len(values)), np.array(values, dtype=np.float64))
    assert_batch_equal(batch, results)
    assert twin.to_state() == det.to_state()


@pytest.mark.parametrize("case", IDS)
@settings(max_examples=25, deadline=None)
@given(values=values_strategy, bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_any_non_finite_value_raises(case: str, values: list[float], bad: float) -> None:
    det = make(case)
    for i, v in enumerate(values):
        det.update(i, v)
    with pytest.raises(NonFiniteValueError):
        det.update(len(values), bad)


@pytest.mark.parametrize("case", IDS)
def test_warm_up_is_explicit(case: str) -> None:
    det = make(case)
    name, params = CASES[case]
    warmup = params["learning_period"] + params["estimation_samples"] if name == "likelihood" else params["warmup"]
    results = [det.update(i, v) for i, v in enumerate(series(warmup + 3))]
    assert all(r == AnomalyResult.warming_up() for r in results[:warmup])
    assert all(r.value_lower_limit is not None for r in results[warmup:])
