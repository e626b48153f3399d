"""Leave-one-folder-out cross-validation of the ``default`` detector's constants on NAB.

    .venv/bin/python bench/default_cv.py [--nab-dir DIR] [--jobs 2] [--only NAME,NAME]

The shared corpus has 5 NAB folders. Each *variant* is a setting of the module
constants of :mod:`detectors.default` (the first, ``shipped``, is the code as it
is; the others change one or two constants). Every variant runs once over all
series; then, for each profile and each folder ``f``:

1. on the 4 other folders, every variant gets its own optimised threshold and its
   raw NAB score there; the best variant wins (ties go to the earlier, simpler one);
2. folder ``f`` is scored with the winner *and the winner's training threshold*.

The held-out raw scores (and null / perfect scores) of the 5 folds are summed and
normalised: the **CV score**, what the selection procedure is worth on series it
did not see. Printed beside it: the in-sample score of every variant (threshold
optimised on all 31 series, as `tools.backtest --labels` reports), each variant's
CV score with only its threshold held out, TP/FP/FN at the standard profile's
threshold, and the same for the published contextOSE (CAD OSE) results.

Variant constants are set in the worker processes before the detector is built
(module attributes read at run time), so nothing in ``detectors/`` knows about this
script. Takes a few minutes on 2 cores.
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

# name -> constants of detectors.default to override. The first is the shipped code.
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "spikes join the range at once": {"RANGE_DELAY": 0},
    "spikes join the range after a day": {"RANGE_DELAY": 288},
    "no early widening": {"EARLY_MARGIN": 0.0},
    "CAD and likelihood from the start": {"CAD_MATURE": 0},
    "v3 (warm-up 150, CAD from the start, v3 range)": {"WARMUP": 150, "CAD_MATURE": 0, "EARLY_MARGIN": 0.0,
                                                        "RANGE_DELAY": 0},
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
    path: Path
    key: str


def run_task(task: Task) -> tuple[str, str, ns.SeriesScores]:
    import importlib

    import detectors.default as dd

    importlib.reload(dd)  # back to the shipped constants, then this variant's
    apply_variant(VARIANTS[task.variant])
    series = bt.read_series(task.path)
    det = dd.DefaultDetector()
    result = det.update_batch(series.ts_ms, series.values)
    return task.variant, task.key, ns.SeriesScores(series.timestamps, result.anomaly_probability.tolist())


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


def cross_validate(prepared: Mapping[str, list[ns.PreparedSeries]], cost: ns.CostMatrix,
                   names: Sequence[str]) -> tuple[Tally, list[str]]:
    """Leave-one-folder-out over ``names`` (variant selection + threshold on 4 folders)."""
    folders = sorted({folder_of(p.name) for p in prepared[names[0]]})
    tally, chosen = Tally(), []
    for held in folders:
        best = None
        for name in names:
            train = [p for p in prepared[name] if folder_of(p.name) != held]
            threshold, raw = ns.optimize_threshold(train, cost)
            if best is None or raw > best[2]:
                best = (name, threshold, raw)
        assert best is not None
        name, threshold = best[0], best[1]
        test = [p for p in prepared[name] if folder_of(p.name) == held]
        tally.add([ns.score_series(p, threshold, cost) for p in test], test, cost)
        chosen.append(f"{held}: {name}")
    return tally, chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nab-dir", type=Path, default=REPO.parent / "shared" / "data" / "nab")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated variant names (shipped is always run)")
    args = ap.parse_args(argv)
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
    windows = ns.load_windows(nab / "labels" / "combined_windows.json")
    profiles = ns.load_profiles(nab / "config" / "profiles.json")
    files = sorted(bt.find_csvs(nab / "data"), key=lambda p: -p.stat().st_size)
    tasks = [Task(v, p, p.relative_to(nab / "data").as_posix()) for p in files for v in names]

    start = time.monotonic()
    scores: dict[str, dict[str, ns.SeriesScores]] = {n: {} for n in names}
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.jobs) as pool:
        for i, (variant, key, s) in enumerate(pool.imap_unordered(run_task, tasks), 1):
            scores[variant][key] = s
            if i % 31 == 0:
                print(f"  {i}/{len(tasks)} runs, {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    prepared = {n: ns.prepare_corpus(bt.match_to_labels(scores[n], windows), windows) for n in names}
    ref_dir = nab / "reference_results" / "contextOSE"
    ref = None
    if ref_dir.is_dir():
        ref_scores: dict[str, ns.SeriesScores] = {}
        for p in sorted(ref_dir.rglob("*.csv")):
            key = bt.label_key_for(p.relative_to(ref_dir).as_posix(), list(windows))
            if key:
                ref_scores[key] = bt.read_result_scores(p)
        ref = ns.prepare_corpus(ref_scores, windows)

    print(f"NAB {nab}: {len(files)} series, {len(names)} variants, {time.monotonic() - start:.0f} s "
          f"on {args.jobs} processes.\n")
    print("In-sample (threshold optimised on all series) and CV with only the threshold held out:\n")
    header = "| variant | " + " | ".join(f"{p} in-sample | {p} CV" for p in PROFILES) + " | TP/FP/FN (standard) |"
    print(header)
    print("|---|" + "---:|" * (2 * len(PROFILES) + 1))
    rows = [(n, prepared[n]) for n in names] + ([("*contextOSE (published)*", ref)] if ref else [])
    for name, preps in rows:
        cells = []
        counts = ""
        for prof in PROFILES:
            cost = profiles[prof]
            whole = ns.score_prepared(preps, prof, cost)
            cv, _ = cross_validate({name: preps}, cost, [name])
            cells += [f"{whole.score:.2f}", f"{cv.score:.2f}"]
            if prof == "standard":
                counts = f"{whole.tp}/{whole.fp}/{whole.fn}"
        print(f"| {name} | " + " | ".join(cells) + f" | {counts} |")

    print("\nLeave-one-folder-out selection among all variants (constants and threshold chosen on 4 folders):\n")
    print("| profile | CV score | TP/FP/FN held out | chosen per held-out folder |")
    print("|---|---:|---:|---|")
    for prof in PROFILES:
        cv, chosen = cross_validate(prepared, profiles[prof], names)
        print(f"| {prof} | {cv.score:.2f} | {cv.tp}/{cv.fp}/{cv.fn} | {'; '.join(chosen)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
