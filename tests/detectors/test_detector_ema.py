"""EMADetector: hand-computed values, no self-leak, zero variance, state size."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from detectors import AnomalyResult, ParamError, build_detector
from detectors.ema import EMADetector
from tests.detectors import _graded_reference as ref

Z9999 = NormalDist().inv_cdf((1 + 0.9999) / 2)  # independent of detectors._stats


def test_hand_computed_three_points() -> None:
    # window=3 -> alpha=0.5. After 1, 3: mean 2, weights (.5, .5), biased var 1,
    # 1 - sum w^2 = .5 -> var 2 (= sample variance of [1, 3]).
    det = EMADetector(window=3, spread_window=3, warmup=2)
    assert det.update(0, 1.0) == AnomalyResult.warming_up()
    assert det.update(1, 3.0) == AnomalyResult.warming_up()
    assert det.mean == 2.0 and det.std == pytest.approx(math.sqrt(2.0), rel=1e-15)
    r = det.update(2, 7.0)  # scored against mean 2, std sqrt(2)
    assert r.value_lower_limit == pytest.approx(2.0 - Z9999 * math.sqrt(2.0), rel=1e-12)
    assert r.value_upper_limit == pytest.approx(2.0 + Z9999 * math.sqrt(2.0), rel=1e-12)
    assert r.anomaly_probability == pytest.approx(math.erf(2.5), rel=1e-12)  # z = 5/sqrt2
    assert not r.is_anomaly
    # Then learned: weights (.25, .25, .5): mean 4.5, biased var 6.75, /(1 - .375) = 10.8
    assert det.mean == 4.5 and det.std == pytest.approx(math.sqrt(10.8), rel=1e-15)


def test_matches_explicit_exponential_weights() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(50.0, 4.0, 40)
    det = EMADetector(window=9, spread_window=9, warmup=2)  # equal spans: the exact EW variance
    a = 2.0 / 10.0
    for n in range(1, len(x) + 1):
        det.update(n, x[n - 1])
        # weight of the first point (1-a)^(n-1), of point i>=1 a(1-a)^(n-1-i)
        w = np.array([(1 - a) ** (n - 1)] + [a * (1 - a) ** (n - 1 - i) for i in range(1, n)])
        mean = float(np.sum(w * x[:n]))
        assert det.mean == pytest.approx(mean, rel=1e-12)
        if n >= 2:
            var = float(np.sum(w * (x[:n] - mean) ** 2)) / (1.0 - float(np.sum(w**2)))
            assert det.std == pytest.approx(math.sqrt(var), rel=1e-9)


def test_value_is_not_part_of_its_own_prediction() -> None:
    history = [10.0, 12.0, 11.0, 9.0, 10.5, 11.5, 10.0, 9.5, 10.0, 11.0, 10.2, 9.9]
    outcomes = []
    for current in (10.0, 1e6, -1e6):
        det = EMADetector(window=10, warmup=5)
        for i, v in enumerate(history):
            det.update(i, v)
        mean_before, std_before = det.mean, det.std
        outcomes.append(det.update(99, current))
        assert det.mean != mean_before  # it did learn afterwards
    # Bounds do not depend on the current value; they come from the prior state.
    assert len({(r.value_lower_limit, r.value_upper_limit) for r in outcomes}) == 1
    mid = (outcomes[0].value_lower_limit + outcomes[0].value_upper_limit) / 2
    assert mid == pytest.approx(mean_before, rel=1e-12)
    assert (outcomes[0].value_upper_limit - mid) == pytest.approx(Z9999 * std_before, rel=1e-9)
    assert [r.is_anomaly for r in outcomes] == [False, True, True]
    # Far outside (z ~ 1e6): graded, above the exact region, but never exactly 1.
    assert all(1.0 - 1e-9 < r.anomaly_probability < 1.0 for r in outcomes[1:])


def test_probability_is_graded_far_out() -> None:
    # The old 2*Phi(z) - 1 gave exactly 1.0 for every z > 8.3: these would all tie.
    history = [10.0, 12.0, 11.0, 9.0, 10.5, 11.5, 10.0, 9.5, 10.0, 11.0, 10.2, 9.9]
    probs = []
    for spike in (14.0, 16.0, 20.0, 40.0, 1e3, 1e6, 1e12, 1e300):
        det = EMADetector(window=10, warmup=5)
        for i, v in enumerate(history):
            det.update(i, v)
        z = abs(spike - det.mean) / det.std
        r = det.update(99, spike)
        assert r.is_anomaly and r.anomaly_probability < 1.0
        assert r.anomaly_probability == 1.0 - ref.graded_tail(z / math.sqrt(2.0)) or z < 6.1
        probs.append(r.anomaly_probability)
    assert probs == sorted(probs) and len(set(probs)) == len(probs)


def test_threshold_in_the_graded_region_keeps_band_and_probability_consistent() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(0.0, 1.0, 3000)
    x[100::97] += rng.uniform(5.0, 5000.0, len(x[100::97]))
    for threshold in (1.0 - 5e-10, 1.0 - 2e-10):
        det = EMADetector(window=50, warmup=10, threshold=threshold)
        results = [det.update(i, v) for i, v in enumerate(x)]
        flagged = sum(r.is_anomaly for r in results)
        assert 0 < flagged < 60
        for v, r in zip(x[10:], results[10:], strict=True):
            outside = v < r.value_lower_limit or v > r.value_upper_limit
            assert r.is_anomaly == (r.anomaly_probability >= threshold) == outside


@pytest.mark.parametrize("level", [0.0, 5.0, -3.25, 1e12, 0.3])
def test_zero_variance(level: float) -> None:
    det = EMADetector(window=20, warmup=3)
    for i in range(50):
        r = det.update(i, level)
        assert not r.is_anomaly and r.anomaly_probability == 0.0
    assert det.std == 0.0
    # Same value again: distance 0, never anomalous; rounding noise neither.
    assert not det.update(50, level).is_anomaly
    noisy = level * (1 + 2e-16) if level else 1e-15
    assert not det.update(51, noisy).is_anomaly
    # A clearly different value is.
    different = level + max(abs(level) * 1e-3, 1.0)
    fresh = EMADetector(window=20, warmup=3)
    for i in range(50):
        fresh.update(i, level)
    assert fresh.update(50, different).is_anomaly


def test_sum_of_0_1_and_0_2_is_not_an_anomaly_after_constant_0_3() -> None:
    det = EMADetector(warmup=2)
    for i in range(20):
        det.update(i, 0.3)
    assert not det.update(20, 0.1 + 0.2).is_anomaly  # 0.30000000000000004


def test_probability_and_band_are_consistent_on_real_data() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_t(3, 2000) * 2 + 40
    det = EMADetector(window=30, warmup=10, threshold=0.99)
    results = [det.update(i, v) for i, v in enumerate(x)]
    flagged = [r.is_anomaly for r in results[10:]]
    assert 0 < sum(flagged) < 200
    for v, r in zip(x[10:], results[10:], strict=True):
        assert r.is_anomaly == (r.anomaly_probability >= 0.99) == (v < r.value_lower_limit or v > r.value_upper_limit)


def test_state_is_tiny_and_constant() -> None:
    det = EMADetector()
    sizes = []
    for n in (10, 10_000):
        for i in range(n):
            det.update(i, math.sin(i))
        sizes.append(len(det.to_state()))
    assert sizes[0] == sizes[1] < 200


def test_params_validated() -> None:
    with pytest.raises(ParamError, match="window"):
        EMADetector(window=1)
    with pytest.raises(ParamError, match="threshold"):
        EMADetector(threshold=0.5)
    with pytest.raises(ParamError, match="warmup"):
        EMADetector(warmup=1)
    with pytest.raises(ParamError, match=r"detector\.params\.windw"):
        build_detector("ema", {"windw": 3})
    with pytest.raises(ParamError, match="spread_window"):
        EMADetector(spread_window=1)
    assert EMADetector().config == {"window": 300, "threshold": 0.9999, "spread_window": 10_000, "warmup": 10}


def test_extreme_values_do_not_poison_the_state() -> None:
    det = EMADetector(window=5, spread_window=5, warmup=3)
    for i, v in enumerate([1e308, -1e308, 1.7976931348623157e308, -1.7976931348623157e308]):
        det.update(i, v)
    # Back to normal: the std decays by sqrt(1 - alpha) per point, from 1e308 to
    # the data scale in ~3500 points (window=5); it never sticks at inf.
    for i in range(5000):
        det.update(10 + i, 1.0 + (i % 2))
    r = det.update(9000, 1.5)
    assert not r.is_anomaly and r.value_upper_limit < 10
    assert det.update(9001, 100.0).is_anomaly


def _spiky(n: int = 2000, seed: int = 5) -> np.ndarray:
    """N(100, 1) with a +30 spike every 200 points (as NAB's load-balancer series)."""
    x = np.random.default_rng(seed).normal(100.0, 1.0, n)
    x[200::200] += 30.0
    return x


def test_a_spike_like_the_last_ones_is_no_alarm_a_larger_one_is() -> None:
    # The spread floor (PEAK_SHARE of the largest recent deviation): the first spike
    # alarms, the ones like it do not, a spike four times larger does.
    x = _spiky()
    x[1900] += 90.0
    flagged = set(np.flatnonzero(EMADetector().update_batch(np.arange(len(x)), x).is_anomaly).tolist())
    assert {200, 1900} <= flagged and not flagged & set(range(400, 1900, 200))
    # without the floor every spike is an alarm: what the floor is for
    plain = EMADetector(window=100, spread_window=100)
    plain.PEAK_SHARE = 0.0
    assert plain.update_batch(np.arange(len(x)), x).is_anomaly.sum() >= 9


def test_the_spread_remembers_longer_than_the_mean() -> None:
    det = EMADetector(window=10, spread_window=1000, warmup=2)
    for i, v in enumerate(_spiky(400)):
        det.update(i, float(v))
    # the mean is back at the level within a few dozen points of the last spike...
    assert abs(det.mean - 100.0) < 1.0
    # ... the spread still counts it (a window-10 EMA forgets it in ~50 points)
    short = EMADetector(window=10, spread_window=10, warmup=2)
    for i, v in enumerate(_spiky(400)):
        short.update(i, float(v))
    assert det.std > 1.5 * short.std


def test_state_of_version_1_is_refused() -> None:
    from detectors.state import StateError, pack_state

    det = EMADetector()
    blob = pack_state("ema", 1, det.config, {"mean": 1.0, "std": 0.5, "w2": 0.1, "count": 50})
    with pytest.raises(StateError, match="version 1"):
        EMADetector.from_state(blob)
    det.update(0, 1.0)
    det.update(1, 2.0)
    again = EMADetector.from_state(det.to_state())
    assert again.update(2, 3.0) == det.update(2, 3.0)
