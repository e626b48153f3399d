"""Leave-one-folder-out cross-validation of the ``default`` detector's constants on NAB.

    .venv/bin/python bench/default_cv.py [--nab-dir DIR] [--jobs 2] [--only NAME,NAME] [--thresholds T,T]
                                         [--fp-cap 1.5]

The shared corpus has 5 NAB folders. A *candidate* is a setting of the module
constants of :mod:`detectors.default` (a *variant*: the first, ``shipped``, is the
code as it is; the others change one or two constants) together with a
``threshold``. The threshold is a constant like the others, not a cut applied to
fixed scores afterwards: an alarm silences the next ``ALARM_REST`` points, so the
scores a detector reports depend on its threshold. Every candidate runs over all
31 series *with its threshold* and is scored *at* it. Then, for each profile and
each folder ``f``:

1. on the 4 other folders, the candidate with the best raw NAB score wins (ties go
   to the earlier variant, then to the detector's default threshold, then to the
   thresholds in the order given);
2. folder ``f`` is scored with the winner.

The held-out raw scores (and null / perfect scores) of the 5 folds are summed and
normalised: the **CV score**, what the selection procedure is worth on series it
did not see. The selection runs a second time under a false-alarm cap
(``--fp-cap``, 1.5 x contextOSE's): in step 1 only candidates raising at most
1.5 x contextOSE's false alarms on the 4 folders compete (contextOSE at the
threshold that gives its 33 on the whole corpus), so the cap is chosen for, not
checked afterwards.
Printed beside it, per variant: the in-sample score (the best of its
thresholds on all 31 series, what `tools.backtest --labels` reports for that
threshold), its CV score with only the threshold chosen on 4 folders, TP/FP/FN at
the standard profile's in-sample threshold, and the shipped code at its default
threshold; the published contextOSE (CAD OSE) results the usual NAB way (one
threshold optimised over its fixed scores).

Variant constants are set in the worker processes before the detector is built
(module attributes read at run time), so nothing in ``detectors/`` knows about this
script. Takes about a minute per variant on 2 cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluation import nab_scoring as ns  # noqa: E402
from tools import backtest as bt  # noqa: E402

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")

# thresholds every variant runs with, besides the detector's default; around 0.875 = NOVELTY_FLOOR +
# (1 - NOVELTY_FLOOR) / 2, the score of a novelty c = 1 (a tie with the record or the range)
THRESHOLDS = (0.87, 0.8729, 0.875, 0.8752, 0.8755, 0.876, 0.877, 0.88, 0.885)


def default_params() -> dict[str, Any]:
    from detectors.default import DefaultDetector

    return dict(DefaultDetector().config)

# name -> constants of detectors.default to override. The first is the shipped code.
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "v5 (likelihood tail 1e-5 at 1 sigma; CAD at any value)": {"LIK_TAIL": 1e-5, "LIK_SIGMA": 1.0, "CAD_SIGMA": 0.0},
    # the gates on a lone likelihood or CAD alarm (v6)
    "likelihood tail 1e-5 (v5)": {"LIK_TAIL": 1e-5},
    "likelihood tail 1e-7": {"LIK_TAIL": 1e-7},
    "likelihood tail 1e-9": {"LIK_TAIL": 1e-9},
    "no likelihood": {"LIK_TAIL": 1e-300},
    "likelihood alarms 1 sigma away (v5)": {"LIK_SIGMA": 1.0},
    "likelihood alarms at any value (v4)": {"LIK_SIGMA": 0.0},
    "CAD alarms at any value (v5)": {"CAD_SIGMA": 0.0},
    "CAD alarms 1.5 sigma away": {"CAD_SIGMA": 1.5},
    "likelihood from 20 scores (v4)": {"LIK_MIN": 20},
    # the rest after an alarm (v5: nothing but a level shift gets through)
    "no level-shift alarm within a rest": {"LEVEL_ALARM": False},
    "alarm rest 10": {"ALARM_REST": 10},
    "alarm rest 30": {"ALARM_REST": 30},
    # the seasonal part (v5)
    "no seasonal part": {"SEASON_MAX_WEEK": 0},
    "seasonal mean of 12": {"SEASON_MEAN": 12},
    "seasonal mean of 48": {"SEASON_MEAN": 48},
    "seasonal burn-in 1 day": {"SEASON_BURN_IN": 1},
    "seasonal records at any scale": {"SEASON_SCALE": 0.0},
    # the range and CAD (v4)
    "spikes join the range at once": {"RANGE_DELAY": 0},
    "no early widening": {"EARLY_MARGIN": 0.0},
    "CAD keeps at most 20000 contexts (v4)": {"MAX_CONTEXTS": 20000},
}


def apply_variant(overrides: Mapping[str, Any]) -> None:
    """Set the constants in this process (a worker); unknown names are an error."""
    import detectors.default as dd

    for name, value in overrides.items():
        if not hasattr(dd, name):
            raise AttributeError(f"detectors.default has no constant {name}")
        setattr(dd, name, value)
    dd.CAD_PARAMS.update(max_contexts=dd.MAX_CONTEXTS, rest_period=dd.CAD_REST)  # derived at import


@dataclass(frozen=True)
class Task:
    variant: str
    threshold: float
    path: Path
    key: str


def run_task(task: Task) -> tuple[str, float, str, ns.SeriesScores]:
    import importlib

    import detectors.default as dd

    importlib.reload(dd)  # back to the shipped constants, then this variant's
    apply_variant(VARIANTS[task.variant])
    series = bt.read_series(task.path)
    det = dd.DefaultDetector(threshold=task.threshold)
    result = det.update_batch(series.ts_ms, series.values)
    scores = ns.SeriesScores(series.timestamps, result.anomaly_probability.tolist())
    return task.variant, task.threshold, task.key, scores


def folder_of(key: str) -> str:
    return key.split("/", 1)[0]


@dataclass
class Tally:
    raw: float = 0.0
    null: float = 0.0
    perfect: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, outcomes: Sequence[ns.SeriesOutcome], preps: Sequence[ns.PreparedSeries],
            cost: ns.CostMatrix) -> None:
        n_windows = sum(p.n_windows for p in preps)
        self.raw += sum(o.raw for o in outcomes)
        self.null += -cost.fn_weight * n_windows
        self.perfect += cost.tp_weight * n_windows
        self.tp += sum(o.tp for o in outcomes)
        self.fp += sum(o.fp for o in outcomes)
        self.fn += sum(o.fn for o in outcomes)

    @property
    def score(self) -> float:
        return ns.normalize(self.raw, self.null, self.perfect)


Candidate = tuple[str, float]  # (variant, threshold)
Scored = dict[Candidate, list[tuple[ns.PreparedSeries, ns.SeriesOutcome]]]  # each series at its threshold


def score_candidates(prepared: Mapping[Candidate, list[ns.PreparedSeries]], cost: ns.CostMatrix) -> Scored:
    """Every series of every candidate scored once, at the candidate's threshold, for one profile:
    the selections below only sum these."""
    return {cand: [(p, ns.score_series(p, cand[1], cost)) for p in preps] for cand, preps in prepared.items()}


def tally_of(pairs: Sequence[tuple[ns.PreparedSeries, ns.SeriesOutcome]], cost: ns.CostMatrix) -> Tally:
    tally = Tally()
    tally.add([o for _, o in pairs], [p for p, _ in pairs], cost)
    return tally


def best_on(scored: Scored, keep: Any = lambda p: True) -> Candidate:
    """The candidate with the best raw score on the series ``keep`` selects (first wins ties)."""
    best: tuple[Candidate, float] | None = None
    for cand, pairs in scored.items():
        raw = sum(o.raw for p, o in pairs if keep(p))
        if best is None or raw > best[1]:
            best = (cand, raw)
    assert best is not None
    return best[0]


def cross_validate(
    scored: Scored, cost: ns.CostMatrix, caps: Mapping[str, int] | None = None
) -> tuple[Tally, list[str]]:
    """Leave-one-folder-out: the best candidate on 4 folders scores the 5th, for each folder.

    With ``caps``, only candidates raising at most ``caps[held]`` false alarms on the 4 folders
    compete (a candidate's alarms, and so its false alarms, are the same under every profile: its
    threshold is part of it); with none under the cap, the one with the fewest false alarms there."""
    first = next(iter(scored.values()))
    folders = sorted({folder_of(p.name) for p, _ in first})
    tally, chosen = Tally(), []
    for held in folders:
        def train(p: ns.PreparedSeries, held: str = held) -> bool:
            return folder_of(p.name) != held

        if caps is None:
            cand = best_on(scored, train)
            chosen.append(f"{held}: {cand[0]} @ {cand[1]}")
        else:
            fps = {c: sum(o.fp for p, o in pairs if train(p)) for c, pairs in scored.items()}
            under = {c: pairs for c, pairs in scored.items() if fps[c] <= caps[held]}
            cand = best_on(under, train) if under else min(scored, key=lambda c: fps[c])
            chosen.append(f"{held}: {cand[0]} @ {cand[1]} ({fps[cand]} <= {caps[held]})" if under
                          else f"{held}: none under {caps[held]}, fewest: {cand[0]} @ {cand[1]} ({fps[cand]})")
        test = [(p, o) for p, o in scored[cand] if folder_of(p.name) == held]
        tally.add([o for _, o in test], [p for p, _ in test], cost)
    return tally, chosen


def reference_fp_caps(preps: list[ns.PreparedSeries], cost: ns.CostMatrix, factor: float) -> dict[str, int]:
    """Per held-out folder: ``factor`` x the reference's false alarms on the 4 other folders, at the
    reference's threshold optimised on the whole corpus (the one the target cap, 1.5 x CAD OSE's 33,
    is stated at), so the 5 training caps are the corpus cap applied to what each fold sees."""
    threshold, _ = ns.optimize_threshold(preps, cost)
    fp = {p.name: ns.score_series(p, threshold, cost).fp for p in preps}
    return {
        held: int(factor * sum(n for name, n in fp.items() if folder_of(name) != held))
        for held in sorted({folder_of(p.name) for p in preps})
    }


def score_fixed(preps: list[ns.PreparedSeries], cost: ns.CostMatrix) -> Tally:
    """Fixed scores (a published result) at the threshold optimised over them."""
    threshold, _ = ns.optimize_threshold(preps, cost)
    tally = Tally()
    tally.add([ns.score_series(p, threshold, cost) for p in preps], preps, cost)
    return tally


def cross_validate_fixed(preps: list[ns.PreparedSeries], cost: ns.CostMatrix) -> Tally:
    """Fixed scores (a published result): the threshold optimised on 4 folders scores the 5th."""
    tally = Tally()
    for held in sorted({folder_of(p.name) for p in preps}):
        threshold, _ = ns.optimize_threshold([p for p in preps if folder_of(p.name) != held], cost)
        test = [p for p in preps if folder_of(p.name) == held]
        tally.add([ns.score_series(p, threshold, cost) for p in test], test, cost)
    return tally


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nab-dir", type=Path, default=REPO.parent / "shared" / "data" / "nab")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated variant names (shipped is always run)")
    grid = ",".join(map(str, THRESHOLDS))
    ap.add_argument("--thresholds", default="", help=f"comma-separated thresholds (default: the detector's, {grid})")
    ap.add_argument("--fp-cap", type=float, default=1.5,
                    help="also select under a cap of this many x contextOSE's false alarms (0: skip)")
    args = ap.parse_args(argv)
    unselectable = [n for n in VARIANTS if "," in n]
    if unselectable:  # --only splits on commas
        ap.error(f"variant names may not hold a comma: {unselectable}")
    nab = args.nab_dir
    if not (nab / "data").is_dir():
        print(f"NAB data not found under {nab}; nothing to do.")
        return 0
    names = list(VARIANTS)
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        unknown = wanted - set(VARIANTS)
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
        names = ["shipped"] + [n for n in names if n in wanted and n != "shipped"]
    default_threshold = default_params()["threshold"]
    extra = tuple(float(t) for t in args.thresholds.split(",")) if args.thresholds else THRESHOLDS
    thresholds = (default_threshold, *(t for t in extra if t != default_threshold))
    windows = ns.load_windows(nab / "labels" / "combined_windows.json")
    profiles = ns.load_profiles(nab / "config" / "profiles.json")
    files = sorted(bt.find_csvs(nab / "data"), key=lambda p: -p.stat().st_size)
    tasks = [Task(v, t, p, p.relative_to(nab / "data").as_posix()) for p in files for v in names for t in thresholds]

    start = time.monotonic()
    scores: dict[Candidate, dict[str, ns.SeriesScores]] = {(n, t): {} for n in names for t in thresholds}
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.jobs) as pool:
        for i, (variant, threshold, key, s) in enumerate(pool.imap_unordered(run_task, tasks), 1):
            scores[(variant, threshold)][key] = s
            if i % 62 == 0:
                print(f"  {i}/{len(tasks)} runs, {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    prepared = {c: ns.prepare_corpus(bt.match_to_labels(scores[c], windows), windows) for c in scores}
    ref_dir = nab / "reference_results" / "contextOSE"
    ref = None
    if ref_dir.is_dir():
        ref_scores: dict[str, ns.SeriesScores] = {}
        for p in sorted(ref_dir.rglob("*.csv")):
            key = bt.label_key_for(p.relative_to(ref_dir).as_posix(), list(windows))
            if key:
                ref_scores[key] = bt.read_result_scores(p)
        ref = ns.prepare_corpus(ref_scores, windows)

    print(f"NAB {nab}: {len(files)} series, {len(names)} variants x {len(thresholds)} thresholds, "
          f"{time.monotonic() - start:.0f} s on {args.jobs} processes.\n")
    print("Per variant: in-sample (its best threshold on all series) and CV with only the threshold "
          "chosen on 4 folders:\n")
    header = ("| variant | " + " | ".join(f"{p} in-sample | {p} CV" for p in PROFILES)
              + " | threshold (standard) | TP/FP/FN (standard) |")
    print(header)
    print("|---|" + "---:|" * (2 * len(PROFILES) + 2))
    default_t = thresholds[0]
    scored = {prof: score_candidates(prepared, profiles[prof]) for prof in PROFILES}
    rows: list[tuple[str, list[Candidate] | None, list[ns.PreparedSeries] | None]] = [
        (n, [c for c in prepared if c[0] == n], None) for n in names]
    rows.append((f"shipped, at its default threshold {default_t} only", [("shipped", default_t)], None))
    if ref:
        rows.append(("*contextOSE (published)*", None, ref))
    for name, cands, fixed in rows:
        cells = []
        counts = where = ""
        for prof in PROFILES:
            cost = profiles[prof]
            if cands is not None:
                mine = {c: scored[prof][c] for c in cands}
                cand = best_on(mine)
                whole = tally_of(mine[cand], cost)
                cv, _ = cross_validate(mine, cost)
                t_used = f"{cand[1]}"
            else:
                assert fixed is not None
                whole = score_fixed(fixed, cost)
                cv = cross_validate_fixed(fixed, cost)
                t_used = "optimised"
            cells += [f"{whole.score:.2f}", f"{cv.score:.2f}"]
            if prof == "standard":
                counts, where = f"{whole.tp}/{whole.fp}/{whole.fn}", t_used
        print(f"| {name} | " + " | ".join(cells) + f" | {where} | {counts} |")

    print("\nLeave-one-folder-out selection among all candidates (constants and threshold chosen on 4 folders):\n")
    print("| profile | CV score | TP/FP/FN held out | chosen per held-out folder |")
    print("|---|---:|---:|---|")
    for prof in PROFILES:
        cv, chosen = cross_validate(scored[prof], profiles[prof])
        print(f"| {prof} | {cv.score:.2f} | {cv.tp}/{cv.fp}/{cv.fn} | {'; '.join(chosen)} |")
    if ref and args.fp_cap:
        standard = profiles["standard"]
        caps = reference_fp_caps(ref, standard, args.fp_cap)
        ref_fp = score_fixed(ref, standard).fp
        print(f"\nThe same selection under a false-alarm cap: on the 4 folders, only candidates raising at most "
              f"{args.fp_cap:g} x contextOSE's false alarms there (at its threshold optimised on the whole corpus, "
              f"standard profile). Whole corpus: contextOSE {ref_fp}, cap {int(args.fp_cap * ref_fp)}.\n")
        print("| profile | CV score | TP/FP/FN held out | chosen per held-out folder (its false alarms <= cap) |")
        print("|---|---:|---:|---|")
        for prof in PROFILES:
            cv, chosen = cross_validate(scored[prof], profiles[prof], caps)
            print(f"| {prof} | {cv.score:.2f} | {cv.tp}/{cv.fp}/{cv.fn} | {'; '.join(chosen)} |")
        # the procedure on all 31 series: what it would ship
        corpus_cap = int(args.fp_cap * ref_fp)
        everything = scored["standard"]
        under = {c: pairs for c, pairs in everything.items() if tally_of(pairs, standard).fp <= corpus_cap}
        if under:
            cand = best_on(under)
            whole = tally_of(under[cand], standard)
            print(f"\nOn all {len(files)} series under the cap ({corpus_cap}): {cand[0]} @ {cand[1]}, "
                  f"standard {whole.score:.2f}, TP/FP/FN {whole.tp}/{whole.fp}/{whole.fn}.")
        else:
            print(f"\nOn all {len(files)} series no candidate raises {corpus_cap} false alarms or fewer.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
