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
    likelihood_update,
    log_likelihood,
    new_likelihood_state,
)
from detectors.registry import UnknownDetectorError

P = LikelihoodParams(
    learning_period=2, estimation_samples=6, historic_window_size=9, reestimation_period=3, averaging_window=2
)


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
        assert lik == pytest.approx(NormalDist(mean, std).cdf(short), abs=1e-12)


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
        expected = NormalDist(mean, std).cdf((0.1 + s) / 2)
        assert lik == pytest.approx(expected, abs=1e-12)
        assert (new.mean, new.std) != (mean, std)


def test_flat_scores_use_the_std_floor() -> None:
    state = new_likelihood_state(P)
    for _ in range(20):
        state, lik = likelihood_update(state, 0.0)
    assert state.std == MIN_STD and lik == 0.5  # avg 0 == mean 0: z = 0
    _, lik = likelihood_update(state, 1.0)
    assert lik == pytest.approx(NormalDist(0.0, MIN_STD).cdf(0.5))


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
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(0, 1, 400), rng.normal(0, 1, 15) + 25, rng.normal(0, 1, 20)])
    results = []
    for i, v in enumerate(x):
        r, b = det.update(i, v), reference.update(i, v)
        ready = state.ready
        state, lik = likelihood_update(state, b.anomaly_probability)
        results.append(r)
        if not ready:
            assert r == AnomalyResult.warming_up()
            continue
        prob = log_likelihood(lik) if log_scale else lik
        assert r == AnomalyResult(b.value_lower_limit, b.value_upper_limit, prob, prob >= det.config["threshold"])
    assert not any(r.is_anomaly for r in results[:400])
    # A sustained shift is caught once it dominates the 10-point average; the
    # single first outlier is not (see the module docstring).
    assert not results[400].is_anomaly
    assert any(r.is_anomaly for r in results[400:415])


def test_wrapper_config_and_errors() -> None:
    det = LikelihoodDetector()
    assert det.config["base"] == "ema"
    assert det.config["base_params"] == {"window": 100, "threshold": 0.9999, "warmup": 10}
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
    from detectors.base import pack_state, unpack_state

    _, fields = unpack_state(det.to_state())
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
