"""The graded anomaly-probability scale of detectors._stats against an independent reference."""

from __future__ import annotations

import math
import sys
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors._stats import (
    EXACT_TAIL,
    gaussian_score,
    graded_tail,
    two_sided_probability,
    two_sided_quantile,
)
from tests.detectors import _graded_reference as ref

FMAX = sys.float_info.max
GRID = [0.0, 0.3, 1.0, 2.5, 2.99, 3.0, 3.5, 4.0, 4.3, 4.5, 5.0, 7.0, 10.0, 18.0, 25.99, 26.0, 26.01, 40.0, 100.0]
GRID += [1e3, 1e5, 1e8, 1e20, 1e100, 1e154, 1e200, 1e300, FMAX]


@pytest.mark.parametrize("x", GRID)
@pytest.mark.parametrize("c", [1.0, 0.5])
def test_graded_tail_matches_the_reference(x: float, c: float) -> None:
    assert graded_tail(x, c) == pytest.approx(ref.graded_tail(x, c), rel=1e-15)
    floor = 1e-18
    assert graded_tail(x, c, floor) == pytest.approx(ref.graded_tail(x, c, floor), rel=1e-15)


def test_exact_region_is_the_calibrated_normal_probability() -> None:
    # Up to 6.1 sigma the probability is 2*Phi(z) - 1 (as erfc, to the last bits).
    for z in np.linspace(0.0, 6.1, 611):
        z = float(z)
        assert two_sided_probability(z) == 1.0 - math.erfc(z / math.sqrt(2.0))
        assert two_sided_probability(z) == pytest.approx(math.erf(z / math.sqrt(2.0)), abs=2.3e-16)
    assert two_sided_probability(3.89059188641) == pytest.approx(0.9999, abs=1e-12)


def test_graded_region_continues_the_exact_one() -> None:
    # Where the two-sided tail crosses the floor (z ~ 6.109) the graded tail takes
    # over with the same value and slope: beyond it by L = ln(floor / tail), it
    # differs from the exact tail by a factor 1 + O(L^2) only.
    z0 = -NormalDist().inv_cdf(EXACT_TAIL / 2.0)
    for dz in (-1e-3, -1e-6):
        x = (z0 + dz) / math.sqrt(2.0)
        assert graded_tail(x) == math.erfc(x)
    for dz in (1e-7, 1e-5, 1e-3, 1e-2):
        x = (z0 + dz) / math.sqrt(2.0)
        exact = math.erfc(x)
        big_l = math.log(EXACT_TAIL / exact)
        assert exact < EXACT_TAIL and graded_tail(x) >= exact
        assert graded_tail(x) == pytest.approx(exact, rel=2.0 * big_l**2 + 1e-12)


def test_never_one_and_monotone_everywhere() -> None:
    zs = np.concatenate([np.linspace(0.0, 60.0, 60_001), np.geomspace(60.0, 1e308, 60_001), [FMAX]])
    p = np.array([two_sided_probability(float(z)) for z in zs])
    assert np.all(np.diff(p) >= 0.0)
    assert p.max() < 1.0 and two_sided_probability(math.inf) < 1.0
    # Graded: far-out points do not tie (the old 2*Phi(z) - 1 was 1.0 for all z > 8.3).
    far = [two_sided_probability(z) for z in (8.5, 9.0, 12.0, 40.0, 1e3, 1e6, 1e12, 1e100, 1e300)]
    assert far == sorted(far) and len(set(far)) == len(far)
    assert all(1.0 - 1e-9 < p < 1.0 for p in far)


@settings(max_examples=200, deadline=None)
@given(a=st.floats(0.0, FMAX), b=st.floats(0.0, FMAX))
def test_monotone_for_any_pair(a: float, b: float) -> None:
    lo, hi = min(a, b), max(a, b)
    assert graded_tail(lo / math.sqrt(2.0)) >= graded_tail(hi / math.sqrt(2.0)) > 0.0
    assert two_sided_probability(lo) <= two_sided_probability(hi) < 1.0


QUANTILE_PS = [0.5 + 1e-12, 0.9, 0.95, 0.99, 0.9999, 0.99999, 1 - 1e-9, 1 - 5e-10, 1 - 1e-10, 1 - 1e-12]


@pytest.mark.parametrize("p", QUANTILE_PS)
def test_quantile_inverts_the_scale(p: float) -> None:
    z = two_sided_quantile(p)
    q = 1.0 - p
    # the smallest float whose graded tail is <= 1 - p
    assert graded_tail(z / math.sqrt(2.0)) <= q < graded_tail(math.nextafter(z, 0.0) / math.sqrt(2.0))
    assert two_sided_probability(z) >= p
    if p <= 1.0 - EXACT_TAIL:
        assert z == pytest.approx(-NormalDist().inv_cdf(q / 2.0), rel=1e-9)


def test_default_threshold_is_3_89_sigma_and_unreachable_thresholds_mean_never() -> None:
    assert two_sided_quantile(0.9999) == pytest.approx(3.8905918864, rel=1e-10)
    assert two_sided_quantile(1.0 - 1e-13) == math.inf
    r = gaussian_score(1e300, 0.0, 1e-12, math.inf, 1.0 - 1e-13)
    assert not r.is_anomaly and r.anomaly_probability < 1.0 - 1e-13
    assert (r.value_lower_limit, r.value_upper_limit) == (-FMAX, FMAX)


@pytest.mark.parametrize("threshold", [0.9999, 1.0 - 1e-9, 1.0 - 2e-10, 1.0 - 1e-11])
def test_gaussian_score_band_and_probability_agree_in_the_graded_region(threshold: float) -> None:
    z_thr = two_sided_quantile(threshold)
    for x in np.concatenate([np.linspace(-200.0, 200.0, 4001), [z_thr, -z_thr, 1e30, -1e300, FMAX]]):
        r = gaussian_score(float(x), 0.0, 1.0, z_thr, threshold)
        outside = x < r.value_lower_limit or x > r.value_upper_limit
        assert r.is_anomaly == (r.anomaly_probability >= threshold) == outside
        assert 0.0 <= r.anomaly_probability < 1.0
