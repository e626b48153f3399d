"""bench/default_cv.py's selection under a false-alarm cap (pure: outcomes made up, no detector runs)."""

from __future__ import annotations

from evaluation import nab_scoring as ns
from tests.bench_module import load_bench

cv = load_bench("default_cv")

COST = ns.CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
FOLDERS = ("f1", "f2", "f3")


def series(folder: str) -> ns.PreparedSeries:
    return ns.PreparedSeries(
        name=f"{folder}/s.csv", n_rows=10, probation=0, window_rows=((2, 3),), scores=(), window_of=(), value=()
    )


def candidate(raw: float, fp: int) -> list[tuple[ns.PreparedSeries, ns.SeriesOutcome]]:
    """The same outcome on every folder: ``raw`` and ``fp`` false alarms each."""
    return [(series(f), ns.SeriesOutcome(f"{f}/s.csv", tp=1, fp=fp, fn=0, raw=raw)) for f in FOLDERS]


def test_the_cap_excludes_the_better_scoring_noisier_candidate():
    scored = {("loud", 0.87): candidate(0.9, fp=5), ("quiet", 0.87): candidate(0.6, fp=2)}
    free, chosen_free = cv.cross_validate(scored, COST)
    capped, chosen = cv.cross_validate(scored, COST, {f: 6 for f in FOLDERS})  # 2 folders: 10 vs 4
    assert all("loud" in c for c in chosen_free) and all("quiet" in c for c in chosen)
    assert (free.fp, capped.fp) == (15, 6)
    assert capped.score < free.score


def test_without_a_candidate_under_the_cap_the_fewest_false_alarms_win_and_it_says_so():
    scored = {("loud", 0.87): candidate(0.9, fp=5), ("less loud", 0.87): candidate(0.6, fp=3)}
    tally, chosen = cv.cross_validate(scored, COST, {f: 1 for f in FOLDERS})
    assert tally.fp == 9 and all("none under 1, fewest: less loud" in c for c in chosen)


def test_reference_caps_are_the_factor_times_the_training_folders_false_alarms():
    # at the reference's whole-corpus threshold
    # per folder a record outside the window and one in it, both scored 1.0: finding the window is
    # worth its false alarm, so the optimised threshold raises one false alarm per folder
    preps = [
        ns.PreparedSeries(
            name=f"{f}/s.csv",
            n_rows=4,
            probation=0,
            window_rows=((2, 3),),
            scores=(1.0, 0.0, 1.0, 0.0),
            window_of=(-1, -1, 0, 0),
            value=(-1.0, -1.0, 1.0, 1.0),
        )
        for f in FOLDERS
    ]
    assert cv.reference_fp_caps(preps, COST, 1.5) == {f: 3 for f in FOLDERS}  # 1.5 x 2 training folders x 1
    assert cv.reference_fp_caps(preps, COST, 1.0) == {f: 2 for f in FOLDERS}
