"""RobustDetector: hand-computed median/MAD, zero MAD, ring buffer, state size."""

from __future__ import annotations

import statistics
from statistics import NormalDist

import numpy as np
import pytest

from detectors import AnomalyResult, ParamError
from detectors.robust import RobustDetector
from tests.detectors import _graded_reference as ref

Z9999 = NormalDist().inv_cdf((1 + 0.9999) / 2)


@pytest.fixture
def mad_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The median/MAD arithmetic alone: no floor from the recent peak deviation."""
    monkeypatch.setattr(RobustDetector, "PEAK_SHARE", 0.0)


def expected(window: list[float], x: float) -> tuple[float, float, float]:
    """Independent median/MAD computation: (lower, upper, probability)."""
    med = statistics.median(window)
    mad = statistics.median([abs(v - med) for v in window])
    sigma = mad / 0.6745
    z = abs(x - med) / sigma
    return med - Z9999 * sigma, med + Z9999 * sigma, ref.two_sided(z)


@pytest.mark.parametrize(
    ("history", "x"),
    [
        ([1.0, 2.0, 3.0, 4.0, 100.0], 10.0),  # odd window: median 3, MAD 1
        ([1.0, 2.0, 3.0, 10.0], 2.0),  # even window: median 2.5, MAD 1
        ([5.0, -1.0, 7.5, 2.0, 2.5, 3.0, 2.25], 2.6),
        ([1.0, 2.0, 3.0, 4.0, 100.0], 30.0),  # z = 0.6745 * 27 = 18: graded region
        ([1.0, 2.0, 3.0, 4.0, 100.0], -1e200),
    ],
)
@pytest.mark.usefixtures("mad_only")
def test_hand_computed(history: list[float], x: float) -> None:
    det = RobustDetector(window=len(history), warmup=len(history))
    for i, v in enumerate(history):
        assert det.update(i, v) == AnomalyResult.warming_up()
    r = det.update(99, x)
    lo, hi, prob = expected(history, x)
    assert r.value_lower_limit == pytest.approx(lo, rel=1e-12)
    assert r.value_upper_limit == pytest.approx(hi, rel=1e-12)
    assert r.anomaly_probability == pytest.approx(prob, rel=1e-12)
    assert r.is_anomaly == (prob >= 0.9999)


@pytest.mark.usefixtures("mad_only")
def test_first_case_is_an_anomaly() -> None:
    det = RobustDetector(window=5, warmup=5)
    for i, v in enumerate([1.0, 2.0, 3.0, 4.0, 100.0]):
        det.update(i, v)
    r = det.update(5, 10.0)  # robust z = 0.6745 * 7 = 4.72
    assert r.is_anomaly


def test_probability_is_graded_far_out() -> None:
    # Quantised data (many equal values) gives tiny MADs and huge robust z-scores;
    # they must stay ordered, not tie at 1.0.
    window = [10.0, 10.0, 10.0, 11.0, 10.0, 9.0, 10.0, 10.0, 12.0, 10.0]
    probs = []
    for spike in (13.0, 20.0, 50.0, 1e3, 1e9, 1e300):
        det = RobustDetector(window=10, warmup=10)
        for i, v in enumerate(window):
            det.update(i, v)
        r = det.update(10, spike)
        assert r.is_anomaly and r.anomaly_probability < 1.0
        probs.append(r.anomaly_probability)
    assert probs == sorted(probs) and len(set(probs)) == len(probs)


@pytest.mark.usefixtures("mad_only")
def test_window_slides() -> None:
    det = RobustDetector(window=4, warmup=3)
    data = [100.0, 100.0, 100.0, 100.0, 1.0, 2.0, 3.0, 4.0]
    for i, v in enumerate(data):
        det.update(i, v)
    assert det.history().tolist() == [1.0, 2.0, 3.0, 4.0]
    r = det.update(9, 2.5)
    lo, hi, _ = expected([1.0, 2.0, 3.0, 4.0], 2.5)
    assert (r.value_lower_limit, r.value_upper_limit) == (pytest.approx(lo), pytest.approx(hi))


def test_value_is_not_part_of_its_own_prediction() -> None:
    outcomes = []
    for current in (10.0, 1e9):
        det = RobustDetector(window=9, warmup=5)
        for i, v in enumerate([10.0, 11.0, 9.0, 10.5, 9.5, 10.2, 9.8, 10.1, 9.9]):
            det.update(i, v)
        outcomes.append(det.update(20, current))
    assert outcomes[0].value_upper_limit == outcomes[1].value_upper_limit
    assert outcomes[0].value_lower_limit == outcomes[1].value_lower_limit
    assert [r.is_anomaly for r in outcomes] == [False, True]


@pytest.mark.parametrize("level", [0.0, 7.0, -2.5, 1e15])
def test_zero_mad_constant(level: float) -> None:
    det = RobustDetector(window=10, warmup=3)
    for i in range(30):
        assert not det.update(i, level).is_anomaly
    r = det.update(30, level)
    assert not r.is_anomaly and r.anomaly_probability == 0.0
    assert det.update(31, level + max(abs(level) * 1e-3, 1.0)).is_anomaly


@pytest.mark.usefixtures("mad_only")
def test_zero_mad_uses_half_the_smallest_value_step() -> None:
    window = [5.0] * 7 + [6.0] + [100.0, 100.0]  # MAD = 0: more than half on the median
    det = RobustDetector(window=10, warmup=10)
    for i, v in enumerate(window):
        det.update(i, v)
    r = det.update(10, 5.0)
    sigma = 0.5 / 0.6745  # half the step 5 -> 6
    assert r.value_lower_limit == pytest.approx(5.0 - Z9999 * sigma, rel=1e-12)
    assert r.value_upper_limit == pytest.approx(5.0 + Z9999 * sigma, rel=1e-12)
    assert not r.is_anomaly


def test_state_is_bounded() -> None:
    rng = np.random.default_rng(0)
    det = RobustDetector()
    x = rng.normal(size=20_000)
    det.update_batch(np.arange(10_000), x[:10_000])
    size_10k = len(det.to_state())
    det.update_batch(np.arange(10_000, 20_000), x[10_000:])
    assert len(det.to_state()) == size_10k
    assert size_10k < 8 * det.config["window"] + 200  # the window of float64 plus a small header
    fresh = RobustDetector()
    fresh.update(0, 1.0)
    assert len(fresh.to_state()) == size_10k  # allocated in full from the first point


def test_params_validated() -> None:
    with pytest.raises(ParamError, match="window"):
        RobustDetector(window=2)
    with pytest.raises(ParamError, match="warmup"):
        RobustDetector(warmup=2)
    with pytest.raises(ParamError, match="threshold"):
        RobustDetector(threshold=1.0)


def test_batch_on_large_input_equals_loop() -> None:
    # More rows than one internal chunk, with huge values mixed in (scaled path).
    rng = np.random.default_rng(9)
    x = rng.normal(0.0, 1.0, 9000)
    x[::500] = 1.7e308
    x[250::500] = -1.7e308
    a, b = RobustDetector(window=25, warmup=5), RobustDetector(window=25, warmup=5)
    batch = a.update_batch(np.arange(len(x)), x)
    loop = [b.update(i, v) for i, v in enumerate(x)]
    assert [batch.result(i) for i in range(len(batch))] == loop
    assert a.to_state() == b.to_state()


def test_quantised_series_does_not_collapse() -> None:
    # Rounded readings: most windows have MAD = 0. One quantisation step must not be a
    # many-sigma event (it was: ~10 % of pure-noise points flagged); a real jump still is.
    rng = np.random.default_rng(0)
    values = np.round(50 + rng.normal(0, 0.3, 3000))
    values[2500] = 58.0
    result = RobustDetector().update_batch(np.arange(3000), values)
    flagged = set(np.flatnonzero(result.is_anomaly).tolist())
    assert 2500 in flagged and len(flagged) <= 3
    counts = np.random.default_rng(1).poisson(0.4, 3000).astype(float)
    assert RobustDetector().update_batch(np.arange(3000), counts).is_anomaly.mean() < 0.01


def test_peak_floor_repeated_spikes() -> None:
    # A spike like the recent ones is within PEAK_SHARE of the peak deviation; the
    # first one and a much larger one are alarms.
    x = np.random.default_rng(5).normal(100.0, 1.0, 1000)
    x[400::100] += 30.0
    x[950] += 90.0
    flagged = np.flatnonzero(RobustDetector().update_batch(np.arange(len(x)), x).is_anomaly).tolist()
    assert flagged == [400, 950]
    lo = RobustDetector(window=300, warmup=10)
    lo.PEAK_SHARE = 0.0  # MAD alone: every spike alarms
    assert lo.update_batch(np.arange(len(x)), x).is_anomaly.sum() >= 6


def test_state_of_version_1_is_migrated() -> None:
    # version 1 had no peak: it continues as a detector that has seen no excursion yet
    from detectors.state import pack_state

    det = RobustDetector(window=5, warmup=3)
    for i, v in enumerate([1.0, 2.0, 3.0, 2.0, 1.0, 2.0]):
        det.update(i, v)
    fields = {"buffer": det.history(), "pos": 0, "count": det.count}
    old = RobustDetector.from_state(pack_state("robust", 1, det.config, fields), window=5, warmup=3)
    fresh = RobustDetector(window=5, warmup=3)
    for i, v in enumerate(det.history()):
        fresh.update(i, float(v))
    fresh._count = det.count  # the same window and count, no peak
    fresh._peak = 0.0
    assert old.update(9, 2.5) == fresh.update(9, 2.5)
