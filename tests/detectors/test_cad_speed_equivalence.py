"""The vectorised CAD (detectors.cad) against the pure-Python one (tests/oracles/cad_pure_python.py).

The selection of contexts runs on numpy columns with a cache between learning steps;
these tests pin that it changes nothing: same score for every point and the same learnt
state (the old state version 1 read back gives this code's bytes), with a fixed range,
with the range learned online (widenings) and with the context cap evicting, and across
state round trips in the middle.
"""

from __future__ import annotations

import numpy as np
import pytest

from detectors.cad import CADDetector
from tests.oracles.cad_pure_python import PurePythonCAD


def _series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    values = 10.0 + 5.0 * np.sin(2 * np.pi * i / 48) + rng.normal(0.0, 0.7, n)
    values[n // 2 :] += 4.0  # a level shift: new value codes, a burst of learning
    values[rng.choice(n, 6, replace=False)] += 25.0  # spikes: online range widenings
    return np.round(values, 1)


CASES = {
    "fixed range": {"min_value": 0.0, "max_value": 45.0, "rest_period": 20},
    "online range": {"rest_period": 20, "max_left_semi_contexts_length": 7, "max_active_neurons_num": 15},
    "evicting": {"rest_period": 10, "max_contexts": 300},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_scores_and_state_as_pure_python(case: str) -> None:
    params = CASES[case]
    values = _series(1500, seed=len(case))
    fast, slow = CADDetector(**params), PurePythonCAD(**params)
    for i, v in enumerate(values.tolist()):
        a, b = fast.update(i, v), slow.update(i, v)
        assert a.anomaly_probability == b.anomaly_probability and a.is_anomaly == b.is_anomaly, f"point {i}"
        if i % 500 == 499:
            blob = fast.to_state()
            # the previous code wrote state version 1; this one reads it into the same model
            assert CADDetector.from_state(slow.to_state(), **params).to_state() == blob, f"state after point {i}"
            fast = CADDetector.from_state(blob, **params)
    assert fast._misses < len(values)  # the cache was used


def test_batch_equals_update_and_state_round_trip() -> None:
    params = CASES["online range"]
    values = _series(800, seed=3)
    ts = np.arange(len(values), dtype=np.int64)
    one = CADDetector(**params)
    batch = one.update_batch(ts, values)
    two = CADDetector(**params)
    two.update_batch(ts[:300], values[:300])
    two = CADDetector.from_state(two.to_state(), **params)
    rest = two.update_batch(ts[300:], values[300:])
    assert np.array_equal(batch.anomaly_probability[300:], rest.anomaly_probability)
    assert one.to_state() == two.to_state()
