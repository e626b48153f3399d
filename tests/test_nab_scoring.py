"""NAB scoring: hand-computed cases, threshold optimisation, and the published numbers.

Closed form used below: NAB's scaled sigmoid 2 / (1 + exp(5y)) - 1 equals -tanh(2.5 y).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from evaluation import nab_scoring as ns
from evaluation.nab_scoring import CostMatrix, SeriesScores

DAY = 86_400_000
N = 100  # rows per toy series: probationary period floor(0.15 * 100) = 15 rows
WINDOW = (60, 69)  # rows, both included: w = 10
STANDARD = ns.STANDARD_PROFILES["standard"]
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nab"


def series(alarms: dict[int, float], n: int = N) -> SeriesScores:
    scores = [0.0] * n
    for row, score in alarms.items():
        scores[row] = score
    return SeriesScores([i * DAY for i in range(n)], scores)


def windows_rows(*rows: tuple[int, int]) -> list[tuple[int, int]]:
    return [(a * DAY, b * DAY) for a, b in rows]


def raw_at(alarms: dict[int, float], cost: CostMatrix = STANDARD, windows=(WINDOW,), threshold=0.5) -> float:
    prep = ns.prepare_series("s", series(alarms), windows_rows(*windows))
    return ns.score_series(prep, threshold, cost).raw


def tp_value(row: int, window=WINDOW) -> float:
    lo, hi = window
    return math.tanh(2.5 * (hi - row + 1) / (hi - lo + 1)) / math.tanh(2.5)


# -- building blocks ---------------------------------------------------------------------
def test_scaled_sigmoid_closed_form():
    for y in (-1.0, -0.5, -0.1, 0.0, 0.2, 1.0, 3.0):
        assert ns.scaled_sigmoid(y) == pytest.approx(-math.tanh(2.5 * y))
    assert ns.scaled_sigmoid(3.01) == -1.0


def test_probationary_period_is_15_percent_capped_at_750():
    assert ns.probation_length(100) == 15
    assert ns.probation_length(1000) == 150
    assert ns.probation_length(4999) == 749
    assert ns.probation_length(5000) == 750
    assert ns.probation_length(22695) == 750


def test_timestamps_and_windows_load(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"a/x.csv": [["1970-01-02 00:00:00.000000", "1970-01-03 00:00:00"]], "b.csv": []}))
    assert ns.load_windows(path) == {"a/x.csv": [(DAY, 2 * DAY)], "b.csv": []}


# -- one window, hand computed -----------------------------------------------------------------
def test_tp_at_window_start_earns_full_tp_weight():
    assert raw_at({60: 1.0}) == pytest.approx(1.0)


def test_tp_at_window_end_earns_little():
    expected = math.tanh(0.25) / math.tanh(2.5)  # y = -1/10
    assert raw_at({69: 1.0}) == pytest.approx(expected)
    assert expected == pytest.approx(0.24824, abs=1e-5)


def test_only_earliest_detection_in_window_counts():
    assert raw_at({62: 1.0, 65: 1.0, 69: 1.0}) == pytest.approx(tp_value(62))
    assert tp_value(62) == pytest.approx(math.tanh(2.0) / math.tanh(2.5))


def test_missed_window_costs_fn_weight():
    assert raw_at({}) == pytest.approx(-1.0)
    assert raw_at({}, ns.STANDARD_PROFILES["reward_low_FN_rate"]) == pytest.approx(-2.0)


def test_fp_before_first_window_costs_full_fp_weight():
    assert raw_at({30: 1.0, 60: 1.0}) == pytest.approx(1.0 - 0.11)
    assert raw_at({30: 1.0, 60: 1.0}, ns.STANDARD_PROFILES["reward_low_FP_rate"]) == pytest.approx(1.0 - 0.22)


def test_fp_right_after_window_is_cheap_and_grows_with_distance():
    # y = (i - 69) / (10 - 1)
    just_after = raw_at({60: 1.0, 70: 1.0}) - 1.0
    assert just_after == pytest.approx(-0.11 * math.tanh(2.5 / 9))
    later = raw_at({60: 1.0, 78: 1.0}) - 1.0
    assert later == pytest.approx(-0.11 * math.tanh(2.5 * 9 / 9))
    far = raw_at({60: 1.0, 99: 1.0}) - 1.0  # y = 30/9 > 3: clipped to the full cost
    assert far == pytest.approx(-0.11)
    assert 0 > just_after > later > far


def test_fp_cost_restarts_after_each_window():
    windows = ((40, 49), (60, 69))
    # row 58 is 9 rows after the first window (w=10): y = 1 -> -tanh(2.5)
    raw = raw_at({40: 1.0, 58: 1.0, 60: 1.0}, windows=windows)
    assert raw == pytest.approx(2.0 - 0.11 * math.tanh(2.5))


def test_detections_in_probationary_period_are_ignored():
    assert raw_at({5: 1.0, 14: 1.0, 60: 1.0}) == pytest.approx(1.0)
    assert raw_at({15: 1.0, 60: 1.0}) == pytest.approx(1.0 - 0.11)  # row 15 is scored


def test_threshold_is_inclusive():
    assert raw_at({60: 0.5}, threshold=0.5) == pytest.approx(1.0)
    assert raw_at({60: 0.5}, threshold=0.50001) == pytest.approx(-1.0)


def test_window_timestamps_match_rows_inclusively_even_between_samples():
    # a window from the middle of row 59 to the middle of row 69 holds rows 60..69
    prep = ns.prepare_series("s", series({}), [(59 * DAY + DAY // 2, 69 * DAY + DAY // 2)])
    assert prep.window_rows == ((60, 69),)


# -- normalisation ---------------------------------------------------------------------------
def test_null_detector_scores_0_and_perfect_detector_100():
    corpus = {"a.csv": series({}), "b.csv": series({}), "c.csv": series({})}
    windows = {"a.csv": windows_rows((20, 29), (60, 69)), "b.csv": windows_rows((50, 59)), "c.csv": []}
    null = ns.score_corpus(corpus, windows)
    perfect = ns.score_corpus(
        {"a.csv": series({20: 1.0, 60: 1.0}), "b.csv": series({50: 1.0}), "c.csv": series({})}, windows
    )
    for name, cost in ns.STANDARD_PROFILES.items():
        assert null[name].threshold == ns.NO_ALARM
        assert null[name].raw == pytest.approx(-3 * cost.fn_weight)
        assert null[name].score == pytest.approx(0.0)
        assert perfect[name].score == pytest.approx(100.0)
        assert (perfect[name].tp, perfect[name].fp, perfect[name].fn) == (3, 0, 0)


def test_normalised_score_of_a_mixed_result():
    # One window caught at its start, one missed, one FP before the windows.
    corpus = {"a.csv": series({30: 0.9, 60: 0.9}), "b.csv": series({})}
    windows = {"a.csv": windows_rows(WINDOW), "b.csv": windows_rows(WINDOW)}
    result = ns.score_corpus(corpus, windows)["standard"]
    raw = 1.0 - 0.11 - 1.0
    assert result.raw == pytest.approx(raw)
    assert result.score == pytest.approx(100 * (raw + 2) / 4)
    assert (result.tp, result.fp, result.fn) == (1, 1, 1)


# -- threshold optimisation ------------------------------------------------------------------
def test_threshold_optimisation_on_toy_corpus():
    corpus = {
        # window caught at 0.8; an FP at 0.9 before it, another at 0.5
        "a.csv": series({30: 0.9, 60: 0.8, 40: 0.5}),
        # no window; an FP at 0.7
        "b.csv": series({50: 0.7}),
    }
    windows = {"a.csv": windows_rows(WINDOW), "b.csv": []}
    # thresholds: none -1 | 0.9: -1.11 | 0.8: 0.89 | 0.7: 0.78 | 0.5: 0.67 | 0.0: everything
    result = ns.score_corpus(corpus, windows)["standard"]
    assert result.threshold == 0.8
    assert result.raw == pytest.approx(0.89)


def test_threshold_depends_on_profile():
    # Catching the window (score 0.6) drags in 10 FPs scored 0.7: worth it at fpWeight
    # 0.11 (1 - 1.1 > -1) but not at 0.22 (1 - 2.2 < -1).
    alarms = {20 + i: 0.7 for i in range(10)} | {60: 0.6}
    result = ns.score_corpus({"a.csv": series(alarms)}, {"a.csv": windows_rows(WINDOW)})
    assert result["standard"].threshold == 0.6
    assert result["standard"].raw == pytest.approx(1.0 - 1.1)
    assert result["reward_low_FP_rate"].threshold == ns.NO_ALARM
    assert result["reward_low_FP_rate"].score == pytest.approx(0.0)


def test_optimiser_matches_brute_force_over_every_threshold():
    rng = random.Random(7)
    corpus, windows = {}, {}
    for s in range(6):
        n = rng.randrange(40, 200)
        scores = [round(rng.random(), 2) for _ in range(n)]  # rounding makes ties
        corpus[f"s{s}.csv"] = SeriesScores([i * DAY for i in range(n)], scores)
        starts = sorted(rng.sample(range(10, n - 10), 2))
        windows[f"s{s}.csv"] = [
            (a * DAY, min(a + rng.randrange(1, 9), b - 1) * DAY) for a, b in zip(starts, [*starts[1:], n], strict=True)
        ]
    prepared = ns.prepare_corpus(corpus, windows)
    for cost in ns.STANDARD_PROFILES.values():
        candidates = sorted({s for p in prepared for s in p.scores} | {ns.NO_ALARM}, reverse=True)
        brute = [(sum(ns.score_series(p, t, cost).raw for p in prepared), t) for t in candidates]
        best_raw = max(r for r, _ in brute)
        best_threshold = next(t for r, t in brute if r == pytest.approx(best_raw, abs=1e-12))
        threshold, raw = ns.optimize_threshold(prepared, cost)
        assert raw == pytest.approx(best_raw, abs=1e-9)
        assert threshold == best_threshold


def test_out_of_order_timestamps_are_scored_in_file_order():
    ts = [i * DAY for i in range(N)]
    ts[40], ts[41] = ts[41], ts[40]  # one step back, far from the window
    scores = [0.0] * N
    scores[60] = 1.0
    result = ns.score_corpus({"a.csv": SeriesScores(ts, scores)}, {"a.csv": windows_rows(WINDOW)})
    assert result["standard"].score == pytest.approx(100.0)


# -- the published numbers -------------------------------------------------------------------
PUBLISHED = {
    "contextOSE": {"standard": 66.13, "reward_low_FP_rate": 62.76, "reward_low_FN_rate": 69.74},
    "numenta": {"standard": 69.52, "reward_low_FP_rate": 62.88, "reward_low_FN_rate": 74.02},
}


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"NAB data not found at {SHARED} (../shared is absent)")
def test_profiles_file_matches_embedded_defaults():
    assert ns.load_profiles(SHARED / "config" / "profiles.json") == ns.STANDARD_PROFILES


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"NAB data not found at {SHARED} (../shared is absent)")
@pytest.mark.parametrize("detector", sorted(PUBLISHED))
def test_reference_results_reproduce_published_scores(detector):
    from tools.backtest import score_results_dir

    windows = ns.load_windows(SHARED / "labels" / "combined_windows.json")
    profiles = ns.load_profiles(SHARED / "config" / "profiles.json")
    table = score_results_dir(SHARED / "reference_results" / detector, windows, profiles)
    got = {name: round(result.score, 2) for name, result in table.items()}
    assert got == PUBLISHED[detector]
    for result in table.values():
        assert len(result.per_series) == 31
        assert result.tp + result.fn == 53
