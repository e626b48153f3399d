"""The plugin's own test: the host project's contract suite, run on this package's detector.

A plugin author runs the same checks as the built-in detectors pass
(``detectors.checks``): state round trip, batch == point by point, bounded state,
probabilities in [0, 1), bounds in order, a complete parameter schema and
versioned state.
"""

from zscore_example import ZScoreDetector

from detectors.checks import check_detector, default_series


def test_zscore_passes_the_contract_suite() -> None:
    check_detector(ZScoreDetector)  # default parameters, the suite's default series
    spiky = default_series(500, seed=2)
    spiky[400] = 1e6  # a 1,000-sigma spike: the probability stays below 1
    check_detector(ZScoreDetector, {"z": 2.5, "warmup": 3}, spiky)
