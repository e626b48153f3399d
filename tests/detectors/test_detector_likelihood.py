"""Anomaly likelihood: the pure core against an independent computation, and the wrapper."""

from __future__ import annotations

import math
import statistics
from statistics import NormalDist

import numpy as np
import pytest

from detectors import AnomalyResult, ParamError, StateError, build_detector
from detectors.likelihood import (
    MIN_STD,
    LikelihoodDetector,
    LikelihoodParams,
    likelihood_from_z,
    likelihood_update,
    likelihood_z_update,
    log_likelihood,
    log_likelihood_from_z,
    new_likelihood_state,
)
from detectors.registry import UnknownDetectorError
from tests.detectors import _graded_reference as ref

P = LikelihoodParams(
    learning_period=2, estimation_samples=6, historic_window_size=9, reestimation_period=3, averaging_window=2
)


def expected_likelihood(short: float, mean: float, std: float) -> float:
    """1 - Q(z), with the tail graded below 1e-9 (independent reference); = NormalDist(mean, std).cdf(short) above."""
    z = (short - mean) / std
    return 1.0 - ref.graded_tail(z / math.sqrt(2.0), 0.5)


def independent_fit(scores_after_learning: list[float], p: LikelihoodParams) -> tuple[float, float]:
    kept = scores_after_learning[-p.historic_window_size :]
    a = p.averaging_window
    averages = [sum(kept[i - a + 1 : i + 1]) / a for i in range(a - 1, len(kept))]
    return statistics.fmean(averages), max(statistics.pstdev(averages), MIN_STD)


def test_matches_independent_computation() -> None:
    rng = np.random.default_rng(2)
    scores = rng.uniform(0.0, 0.6, 40).tolist()
    scores[25] = scores[26] = 1.0
    state = new_likelihood_state(P)
    first_fit = P.learning_period + P.estimation_samples
    for n, s in enumerate(scores):  # n scores seen before this one
        state, lik = likelihood_update(state, s)
        if n < first_fit:
            assert lik == 0.5
            continue
        # The fit in force was made at the last re-estimation point <= n.
        fit_at = first_fit + (n - first_fit) // P.reestimation_period * P.reestimation_period
        mean, std = independent_fit(scores[P.learning_period : fit_at], P)
        short = (scores[n - 1] + s) / 2
        assert lik == pytest.approx(NormalDist(mean, std).cdf(short), abs=1e-9)
        assert lik == pytest.approx(expected_likelihood(short, mean, std), rel=1e-13)


def test_pure_function_does_not_mutate_its_input() -> None:
    state = new_likelihood_state(P)
    for s in [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1, 0.2, 0.3]:
        state, _ = likelihood_update(state, s)
    snapshot = (state.history.copy(), state.pos, state.count, state.mean, state.std)
    new, _ = likelihood_update(state, 0.9)
    assert new is not state and new.count == state.count + 1
    assert np.array_equal(state.history, snapshot[0])
    assert (state.pos, state.count, state.mean, state.std) == snapshot[1:]
    same, _ = likelihood_update(state, 0.9, inplace=True)
    assert same is state and state.count == snapshot[2] + 1


def test_score_is_judged_by_the_fit_before_it() -> None:
    # At a re-estimation point, the score that triggers the re-fit was judged by
    # the previous fit: changing it changes the next fit, not its own likelihood's fit.
    state = new_likelihood_state(P)
    for s in [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1]:
        state, _ = likelihood_update(state, s)
    # count is now 10; the next score makes it 11 = 8 + 3: a re-fit.
    mean, std = state.mean, state.std
    for s in (0.0, 1.0):
        new, lik = likelihood_update(state, s)
        assert lik == pytest.approx(expected_likelihood((0.1 + s) / 2, mean, std), rel=1e-13)
        assert (new.mean, new.std) != (mean, std)


def test_flat_scores_use_the_std_floor() -> None:
    state = new_likelihood_state(P)
    for _ in range(20):
        state, lik = likelihood_update(state, 0.0)
    assert state.std == MIN_STD and lik == 0.5  # avg 0 == mean 0: z = 0
    _, lik = likelihood_update(state, 1.0)  # z = 50: graded, below 1
    assert lik == pytest.approx(expected_likelihood(0.5, 0.0, MIN_STD), rel=1e-13)
    assert 1.0 - 1e-9 < lik < 1.0


def test_raw_scores_must_be_probabilities() -> None:
    state = new_likelihood_state(P)
    for bad in (-0.1, 1.5, math.nan, math.inf):
        with pytest.raises(ValueError):
            likelihood_update(state, bad)


def test_history_is_a_bounded_ring() -> None:
    state = new_likelihood_state(P)
    for i in range(1000):
        state, _ = likelihood_update(state, (i % 7) / 7, inplace=True)
    assert state.history.shape == (P.historic_window_size,)


def test_log_scale() -> None:
    assert log_likelihood(1.0) == 1.0
    assert log_likelihood(0.0) == 0.0
    assert log_likelihood(0.5) == pytest.approx(math.log(0.5000000001) / math.log(1e-10), rel=1e-6)
    assert log_likelihood(0.99999) == pytest.approx(0.5, abs=1e-4)
    ls = [log_likelihood(x) for x in np.linspace(0, 1, 101)]
    assert ls == sorted(ls)


def paper_log_scale(z: float) -> float:
    """log(1.0000000001 - L) / log(1 - 0.9999999999) with L = 1 - Q(z), at 60 digits (no grading)."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 60
        eps = Decimal.from_float(1.0000000001) - 1  # the float constants' exact values
        tail = (ref.log_erfc(z / math.sqrt(2.0))).exp() / 2
        return float((eps + tail).ln() / (1 - Decimal.from_float(0.9999999999)).ln())


@pytest.mark.parametrize("z", [-8.0, -1.0, 0.0, 1.0, 2.5, 4.26, 5.0, 6.0, 7.0, 8.0, 8.7])
def test_log_scale_from_z_is_the_papers_where_representable(z: float) -> None:
    # Exact up to a tail of 1e-18 (z = 8.76), i.e. up to 1 - 4.3e-10 on this scale.
    assert log_likelihood_from_z(z) == pytest.approx(max(0.0, paper_log_scale(z)), rel=1e-13, abs=1e-15)
    assert log_likelihood_from_z(4.26) == pytest.approx(0.5, abs=2e-3)  # L ~ 0.99999


def test_likelihood_is_graded_at_the_top() -> None:
    # Computed literally, L and its log scale are exactly 1.0 for every z > 8.3.
    zs = [6.0, 8.0, 8.5, 9.0, 10.0, 20.0, 50.0, 100.0, 1e3, 1e300]
    plain = [likelihood_from_z(z) for z in zs]
    logs = [log_likelihood_from_z(z) for z in zs]
    for values in (plain, logs):
        assert values == sorted(values) and len(set(values)) == len(values) and values[-1] < 1.0
    assert all(p == 1.0 - ref.graded_tail(z / math.sqrt(2.0), 0.5) for p, z in zip(plain, zs, strict=True))
    assert logs[3] > 1.0 - 4.4e-10  # beyond the paper's representable range: graded
    assert likelihood_from_z(-40.0) == 0.0 and log_likelihood_from_z(-40.0) == 0.0
    grid = np.linspace(-120.0, 120.0, 24_001)
    for f in (likelihood_from_z, log_likelihood_from_z):
        values = np.array([f(float(z)) for z in grid])
        assert np.all(np.diff(values) >= 0.0) and values.max() < 1.0 and values.min() >= 0.0


def test_params_cross_checks() -> None:
    with pytest.raises(ParamError, match="estimation_samples"):
        LikelihoodParams(estimation_samples=10, averaging_window=10)
    with pytest.raises(ParamError, match="historic_window_size"):
        LikelihoodParams(estimation_samples=100, historic_window_size=50)
    with pytest.raises(ParamError, match="learning_period"):
        LikelihoodParams(learning_period=-1)


SMALL = {
    "learning_period": 10,
    "estimation_samples": 20,
    "historic_window_size": 60,
    "reestimation_period": 10,
    "averaging_window": 5,
}


@pytest.mark.parametrize("base", ["ema", "robust"])
@pytest.mark.parametrize("log_scale", [True, False])
def test_wrapper_keeps_base_bounds_and_replaces_probability(base: str, log_scale: bool) -> None:
    params = {
        "learning_period": 20,
        "estimation_samples": 100,
        "historic_window_size": 200,
        "reestimation_period": 20,
        "averaging_window": 10,
    }
    det = build_detector(
        "likelihood",
        {"base": base, "log_scale": log_scale, "threshold": 0.5 if log_scale else 0.99999, **params},
    )
    reference = build_detector(base)  # default base parameters, like the wrapper's
    state = new_likelihood_state(LikelihoodParams(**params))
    twin = new_likelihood_state(LikelihoodParams(**params))
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(0, 1, 400), rng.normal(0, 1, 15) + 25, rng.normal(0, 1, 20)])
    results = []
    for i, v in enumerate(x):
        r, b = det.update(i, v), reference.update(i, v)
        ready = state.ready
        state, z = likelihood_z_update(state, b.anomaly_probability)
        twin, lik = likelihood_update(twin, b.anomaly_probability)
        results.append(r)
        if not ready:
            assert r == AnomalyResult.warming_up() and z is None and lik == 0.5
            continue
        assert lik == likelihood_from_z(z)
        prob = log_likelihood_from_z(z) if log_scale else lik
        assert (r.value_lower_limit, r.value_upper_limit, r.anomaly_probability, r.is_anomaly) == (
            b.value_lower_limit, b.value_upper_limit, prob, prob >= det.config["threshold"]
        )
        assert (r.explanation is None) == (not r.is_anomaly)  # anomalies are explained (sustained)
    assert not any(r.is_anomaly for r in results[:400])
    # A sustained shift is caught once it dominates the 10-point average; the
    # single first outlier is not (see the module docstring).
    assert not results[400].is_anomaly
    assert any(r.is_anomaly for r in results[400:415])
    # The shift's strongest points are graded, not a run of ties at 1.0.
    top = [r.anomaly_probability for r in results[400:]]
    assert max(top) < 1.0 and len(set(top)) > len(top) // 2


def test_wrapper_config_and_errors() -> None:
    det = LikelihoodDetector()
    assert det.config["base"] == "ema"
    assert det.config["base_params"] == {"window": 300, "threshold": 0.9999, "spread_window": 10_000, "warmup": 10}
    assert det.config["threshold"] == 0.5 and det.config["log_scale"] is True
    with pytest.raises(ParamError, match=r"^base_params\.window"):
        build_detector("likelihood", {"base_params": {"window": 1}})
    with pytest.raises(UnknownDetectorError, match="nope"):
        build_detector("likelihood", {"base": "nope"})
    with pytest.raises(ParamError, match="estimation_samples"):
        build_detector("likelihood", {"estimation_samples": 5, "averaging_window": 5})


def test_base_params_spelling_does_not_change_the_state_identity() -> None:
    a = LikelihoodDetector(base_params={"window": 100})
    a.update(0, 1.0)
    blob = a.to_state()
    b = LikelihoodDetector.from_state(blob, base_params={"window": "100", "warmup": 10})
    assert b.to_state() == blob
    with pytest.raises(StateError):
        LikelihoodDetector.from_state(blob, base_params={"window": 50})


def test_corrupt_base_blob_is_a_state_error() -> None:
    det = LikelihoodDetector(**SMALL)
    det.update(0, 1.0)
    from detectors.state import pack_state, unpack_state

    _, fields = unpack_state(det.to_state(), "likelihood")
    fields["base"] = b"not a state"
    with pytest.raises(StateError):
        LikelihoodDetector.from_state(pack_state("likelihood", 1, det.config, fields), **SMALL)


def test_state_is_bounded_with_default_parameters() -> None:
    det = LikelihoodDetector()
    rng = np.random.default_rng(0)
    x = rng.normal(size=20_000)
    det.update_batch(np.arange(10_000), x[:10_000])
    size_10k = len(det.to_state())
    det.update_batch(np.arange(10_000, 20_000), x[10_000:])
    assert len(det.to_state()) == size_10k
    assert size_10k < 8 * 8640 + 500  # the score ring plus the base's ~140 bytes
