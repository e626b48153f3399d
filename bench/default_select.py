"""Model selection of the ``default`` detector on NAB and the AIOps KPIs together, leave one group out.

    .venv/bin/python bench/default_select.py [--shared DIR] [--jobs 2] [--only NAME,NAME]

A *variant* is a setting of module constants of :mod:`detectors.default` (the
first, ``shipped``, is the code as it is). Every variant runs over every series of
both corpora (NAB's 31 shared series and the 19 AIOps KPIs, gzipped), as the
backtest runs them, and is scored the NAB way (threshold optimised per profile
over a corpus). Printed:

* per variant, in-sample: standard / low-FP / low-FN per corpus, TP/FP/FN at the
  standard profile's threshold;
* the **leave-one-group-out** selection: the groups are NAB's 5 folders and 4
  groups of AIOps KPIs that keep similar KPIs together (the per-5-minute KPIs;
  the per-minute ones by the date their series starts, i.e. by the collection
  they come from). For each group ``g`` and profile, the variant with the best
  mean normalised score over the two corpora on the other groups wins; ``g`` is
  scored with it *at the threshold optimised for it on the other groups of
  ``g``'s corpus*. The held-out raw scores of a corpus are summed and normalised:
  its **CV score**, what the selection is worth on series it did not see;
* the ablation: the shipped detector without each of its parts.

Variant constants are set in the worker processes before the detector runs, so
nothing in ``detectors/`` knows about this script.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from detectors._stats import two_sided_probability  # noqa: E402
from evaluation import nab_scoring as ns  # noqa: E402
from tools import backtest as bt  # noqa: E402

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
CORPORA = ("nab", "aiops")

# one change against the shipped constants each; the ablation removes one part each
VARIANTS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "threshold 8 sigma": {"THRESHOLD_SIGMA": 8.0},
    "novelty from 3 sigma": {"NOVELTY_MIN_SIGMA": 3.0},
    "sustained ratio 4": {"SUSTAINED_RATIO": 4.0},
    "rest 10": {"ALARM_REST": 10},
    "level span 10": {"LEVEL_SPAN": 10},
    "closer forecast (smaller z)": {"FORECAST_CHOICE": "closer"},
}
ABLATION: dict[str, dict[str, Any]] = {
    "without the seasonal forecast": {"SEASONAL_FORECAST": False},
    "without the range novelty": {"NOVELTY_MIN_SIGMA": math.inf},
    "without the sustained part": {"SUSTAINED_RATIO": math.inf},
    "without the alarm rest": {"ALARM_REST": 0},
    "without clipping what it learns": {"CLIP": 1e300},
}


@dataclass(frozen=True)
class Series:
    key: str
    corpus: str
    group: str
    path: Path


def aiops_group(cadence_s: int, first: str) -> str:
    """The AIOps group of a KPI: per-5-minute KPIs together, per-minute ones by their start date.

    >>> aiops_group(300, "2016-07-22 16:00:00"), aiops_group(60, "2017-04-01 10:08:00")
    ('aiops-5min', 'aiops-1min-2017-04-01')
    """
    return "aiops-5min" if cadence_s >= 300 else f"aiops-1min-{first[:10]}"


def find_series(shared: Path) -> list[Series]:
    """NAB's series (group: folder) and the AIOps KPIs (group: :func:`aiops_group`)."""
    nab_root, aiops_root = shared / "data" / "nab" / "data", shared / "data" / "aiops" / "data"
    out = [
        Series(p.relative_to(nab_root).as_posix(), "nab", "nab-" + p.parent.name, p) for p in bt.find_csvs(nab_root)
    ]
    manifest = {}
    with open(shared / "data" / "aiops" / "MANIFEST.tsv", encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        for line in fh:
            row = dict(zip(header, line.rstrip("\n").split("\t"), strict=True))
            manifest[row["series"]] = aiops_group(int(row["cadence_s"]), row["first"])
    for p in bt.find_csvs(aiops_root):
        key = bt.series_key(p, aiops_root)
        out.append(Series(key, "aiops", manifest[key], p))
    return out


def shipped_constants() -> dict[str, Any]:
    """The shipped value of every constant a variant sets (each task starts from them: the worker
    processes run one variant after another)."""
    import detectors.default as dd

    names = {name for overrides in (*VARIANTS.values(), *ABLATION.values()) for name in overrides}
    missing = sorted(n for n in names if not hasattr(dd, n))
    if missing:
        raise SystemExit(f"variants set {missing}, which detectors.default does not have")
    return {name: getattr(dd, name) for name in names}


SHIPPED = shipped_constants()


def run_task(task: tuple[Series, dict[str, Any]]) -> np.ndarray:
    series, overrides = task
    import detectors.default as dd

    for name, value in {**SHIPPED, **overrides}.items():
        setattr(dd, name, value)
    data = bt.read_series(series.path)
    params = {"threshold": two_sided_probability(dd.THRESHOLD_SIGMA)}  # the threshold is a constant like the others
    return bt.run_detector("default", params, data.ts_ms, data.values).anomaly_probability


def run_variant(pool: Any, series: Sequence[Series], overrides: dict[str, Any]) -> list[np.ndarray]:
    order = sorted(range(len(series)), key=lambda i: -series[i].path.stat().st_size)
    results = pool.map(run_task, [(series[i], overrides) for i in order], chunksize=1)
    out: list[np.ndarray] = [np.zeros(0)] * len(series)
    for i, r in zip(order, results, strict=True):
        out[i] = r
    return out


def prepare(series: Sequence[Series], shared: Path) -> list[ns.PreparedSeries]:
    """Each series' windows and record values (independent of the scores, which are filled in later)."""
    windows = {
        "nab": ns.load_windows(shared / "data" / "nab" / "labels" / "combined_windows.json"),
        "aiops": ns.load_windows(shared / "data" / "aiops" / "labels" / "combined_windows.json"),
    }
    out = []
    for s in series:
        data = bt.read_series(s.path)
        out.append(ns.prepare_series(s.key, ns.SeriesScores(data.ts_ms.tolist(), [0.0] * len(data.ts_ms)),
                                     windows[s.corpus][s.key]))
    return out


def with_scores(prep: ns.PreparedSeries, scores: np.ndarray) -> ns.PreparedSeries:
    return ns.PreparedSeries(prep.name, prep.n_rows, prep.probation, prep.window_rows,
                             tuple(scores[prep.probation:].tolist()), prep.window_of, prep.value)


def corpus_score(preps: Sequence[ns.PreparedSeries], profile: str, threshold: float | None = None) -> ns.ProfileScore:
    """The NAB score of these series, the threshold optimised over them (or given)."""
    cost = ns.STANDARD_PROFILES[profile]
    if threshold is None:
        return ns.score_prepared(preps, profile, cost)
    outcomes = tuple(ns.score_series(p, threshold, cost) for p in preps)
    n_windows = sum(p.n_windows for p in preps)
    raw = sum(o.raw for o in outcomes)
    null, perfect = -cost.fn_weight * n_windows, cost.tp_weight * n_windows
    return ns.ProfileScore(profile, threshold, ns.normalize(raw, null, perfect), raw, null, perfect,
                           sum(o.tp for o in outcomes), sum(o.fp for o in outcomes), sum(o.fn for o in outcomes),
                           outcomes)


def cross_validate(
    series: Sequence[Series], scored: Mapping[str, Sequence[ns.PreparedSeries]], profile: str
) -> tuple[dict[str, float], dict[str, str]]:
    """Leave one group out (module docstring): the CV score per corpus and the variant picked per group."""
    groups = sorted({s.group for s in series})
    held: dict[str, list[float]] = {c: [0.0, 0.0, 0.0] for c in CORPORA}  # raw, null, perfect
    picks = {}
    for g in groups:
        train = {c: [i for i, s in enumerate(series) if s.group != g and s.corpus == c] for c in CORPORA}

        def objective(name: str, train: dict[str, list[int]] = train) -> float:
            return sum(corpus_score([scored[name][i] for i in train[c]], profile).score for c in CORPORA) / 2

        best = max(scored, key=objective)  # ties: the earlier variant (dicts keep order)
        picks[g] = best
        corpus = next(s.corpus for s in series if s.group == g)
        threshold = corpus_score([scored[best][i] for i in train[corpus]], profile).threshold
        test = [scored[best][i] for i, s in enumerate(series) if s.group == g]
        result = corpus_score(test, profile, threshold)
        for k, v in enumerate((result.raw, result.null, result.perfect)):
            held[corpus][k] += v
    return {c: ns.normalize(*held[c]) for c in CORPORA}, picks


def in_sample(series: Sequence[Series], preps: Sequence[ns.PreparedSeries]) -> dict[str, list[ns.ProfileScore]]:
    return {c: [corpus_score([p for p, s in zip(preps, series, strict=True) if s.corpus == c], prof)
                for prof in PROFILES] for c in CORPORA}


def format_row(name: str, table: dict[str, list[ns.ProfileScore]]) -> str:
    cells = []
    for c in CORPORA:
        std = table[c][0]
        cells.append(" / ".join(f"{r.score:5.1f}" for r in table[c]) + f"  {std.tp}/{std.fp}/{std.fn}")
    return f"{name:<34} | " + " | ".join(f"{cell:<32}" for cell in cells)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated variant / ablation names (shipped always runs)")
    parser.add_argument("--no-ablation", action="store_true")
    args = parser.parse_args(argv)
    variants = dict(VARIANTS) if args.no_ablation else {**VARIANTS, **ABLATION}
    if args.only:
        names = ["shipped", *[n.strip() for n in args.only.split(",") if n.strip()]]
        unknown = [n for n in names if n not in variants]
        if unknown:
            parser.error(f"--only: unknown variant(s) {unknown}; known: {list(variants)}")
        variants = {n: variants[n] for n in dict.fromkeys(names)}
    series = find_series(args.shared)
    started = time.monotonic()
    preps = prepare(series, args.shared)
    scored: dict[str, list[ns.PreparedSeries]] = {}
    print(f"{len(series)} series ({sum(p.n_rows for p in preps):,} points), {len(variants)} variants, "
          f"{args.jobs} processes", flush=True)
    header = f"{'variant (in-sample)':<34} | {'NAB: std / low-FP / low-FN  TP/FP/FN':<32} | AIOps: the same"
    print(header + "\n" + "-" * len(header), flush=True)
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for name, overrides in variants.items():
            scores = run_variant(pool, series, overrides)
            scored[name] = [with_scores(p, s) for p, s in zip(preps, scores, strict=True)]
            print(format_row(name, in_sample(series, scored[name])), flush=True)
    selectable = {n: v for n, v in scored.items() if n in VARIANTS}
    print("\nleave one group out (groups: " + ", ".join(sorted({s.group for s in series})) + ")")
    for profile in PROFILES:
        cv, picks = cross_validate(series, selectable, profile)
        chosen = sorted(set(picks.values()))
        print(f"{profile:<20} CV NAB {cv['nab']:6.2f}  CV AIOps {cv['aiops']:6.2f}  picked: {', '.join(chosen)}")
    print(f"\n{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
