"""bench/default_select.py's leave-one-group-out selection (pure: prepared series made up, no detector runs)."""

from __future__ import annotations

from evaluation import nab_scoring as ns
from tests.bench_module import load_bench

sel = load_bench("default_select")


def _prep(name: str, scores: list[float], window: tuple[int, int] | None) -> ns.PreparedSeries:
    n = len(scores)
    window_of = [0 if window and window[0] <= i <= window[1] else -1 for i in range(n)]
    value = [1.0 if w == 0 else -1.0 for w in window_of]
    rows = (window,) if window else ()
    return ns.PreparedSeries(name, n, 0, rows, tuple(scores), tuple(window_of), tuple(value))


def _series(group: str, corpus: str) -> object:
    return sel.Series(f"{group}.csv", corpus, group, None)


def test_the_held_out_group_is_scored_with_what_won_on_the_others() -> None:
    series = [_series(g, c) for g, c in (("a", "nab"), ("b", "nab"), ("x", "aiops"), ("y", "aiops"))]
    hit = [0.0] * 10
    hit[5] = 0.9  # an alarm at the window's first record
    miss = [0.0] * 10
    miss[1] = 0.9  # an alarm before the window: a false positive and a missed window
    good = [_prep(s.key, hit, (5, 8)) for s in series]
    bad = [_prep(s.key, miss, (5, 8)) for s in series]
    mixed = [good[0], bad[1], good[2], good[3]]  # best on every group but "b"
    cv, picks = sel.cross_validate(series, {"bad": bad, "good": good, "mixed": mixed}, "standard")  # ties: earlier
    assert picks == {"a": "good", "b": "good", "x": "good", "y": "good"}
    assert cv["nab"] == cv["aiops"] == 100.0
    cv, picks = sel.cross_validate(series, {"bad": bad, "mixed": mixed}, "standard")
    assert picks["b"] == "mixed" and cv["nab"] < 100.0  # held out, "b" gets mixed's bad scores
    assert cv["aiops"] == 100.0


def test_corpus_score_at_a_given_threshold_counts_what_reaches_it() -> None:
    prep = [_prep("s", [0.0, 0.5, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0], (5, 8))]
    at_09 = sel.corpus_score(prep, "standard", 0.9)
    at_05 = sel.corpus_score(prep, "standard", 0.5)
    assert (at_09.tp, at_09.fp, at_09.score) == (1, 0, 100.0)
    assert (at_05.tp, at_05.fp) == (1, 1) and at_05.score < 100.0
