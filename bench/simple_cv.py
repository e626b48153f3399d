"""Leave-one-folder-out cross-validation of the simple detectors (``ema``, ``robust``) on NAB.

    .venv/bin/python bench/simple_cv.py [--nab-dir DIR] [--jobs 2] [--detectors ema,robust] [--fine]

Each detector has a small grid of *variants* (parameters and class constants; the
first, ``shipped``, is the detector with its default parameters). Every variant
runs once over the 31 shared NAB series; then, per profile, the table gives each
variant's score in-sample (threshold optimised on all series) and with only its
threshold cross-validated (chosen on 4 folders, the 5th scored, rotated), and
TP/FP/FN at the standard profile's in-sample threshold. The last table is the
honest figure for the *selection*: per held-out folder, the variant and its
threshold are both chosen on the other 4 folders (``bench/default_select.py`` does
the same for ``default``). The shipped defaults are the variant that this
selection picks most often for the standard profile; the table shows whether the
shipped one is also the in-sample best (it need not be).

Constants are set in the worker processes (class attributes read at run time),
so nothing in ``detectors/`` knows about this script. About 5 minutes on 2 cores
(most of it the threshold optimisation of the cross-validation).
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# The NAB scorer and the backtest's CSV reading come through default_cv, so both scripts
# score the same way.
from default_cv import PROFILES, bt, cross_validate, ns  # noqa: E402

from detectors.registry import build_detector  # noqa: E402


@dataclass(frozen=True)
class Variant:
    detector: str
    params: Mapping[str, Any] = field(default_factory=dict)
    # "module:Class:ATTR" -> value, set on the class before the detector is built
    constants: Mapping[str, Any] = field(default_factory=dict)


_ROBUST_PEAK = "detectors.robust:RobustDetector:PEAK_SHARE"
_ROBUST_SPAN = "detectors.robust:RobustDetector:PEAK_SPAN"
_EMA_PEAK = "detectors.ema:EMADetector:PEAK_SHARE"


def _variants(fine: bool) -> dict[str, dict[str, Variant]]:
    """The grids. Coarse (default): 2-3 values per constant; ``--fine`` adds the values
    between (72 EMA and 28 robust variants: the selection then chases noise, see
    docs/detectors.md)."""
    ema = {"shipped": Variant("ema")}
    windows = (30, 100, 300) if fine else (100, 300)
    peaks = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5) if fine else (0.0, 0.3, 0.5)
    for window in windows:
        for spread in (window, 1000, 3000, 10000) if fine else (window, 10000):
            for peak in peaks:
                ema[f"window {window}, spread_window {spread}, PEAK_SHARE {peak}"] = Variant(
                    "ema", {"window": window, "spread_window": spread}, {_EMA_PEAK: peak}
                )
    robust = {"shipped": Variant("robust")}
    for window in (100, 300):
        for peak in (0.0, 0.2, 0.3, 0.4, 0.5) if fine else (0.0, 0.3, 0.5):
            for span in ((3000, 10000, 30000) if fine else (3000, 30000)) if peak else (10000,):
                robust[f"window {window}, PEAK_SHARE {peak}, PEAK_SPAN {span}"] = Variant(
                    "robust", {"window": window}, {_ROBUST_PEAK: peak, _ROBUST_SPAN: span}
                )
    return {"ema": ema, "robust": robust}


VARIANTS = _variants("--fine" in sys.argv)  # module level: the fork workers see the same grid


def _set_constant(spec: str, value: Any) -> None:
    module, cls, attr = spec.split(":")
    owner = getattr(importlib.import_module(module), cls)
    if not hasattr(owner, attr):
        raise AttributeError(f"{module}.{cls} has no constant {attr}")
    setattr(owner, attr, value)


@dataclass(frozen=True)
class Task:
    detector: str
    variant: str
    path: Path
    key: str


def run_task(task: Task) -> tuple[str, str, str, ns.SeriesScores]:
    variant = VARIANTS[task.detector][task.variant]
    shipped = VARIANTS[task.detector]["shipped"]
    # back to the shipped constants first (a worker runs many variants), then this variant's
    for spec in {**shipped.constants, **variant.constants}:
        importlib.reload(importlib.import_module(spec.split(":")[0]))
    for spec, value in variant.constants.items():
        _set_constant(spec, value)
    series = bt.read_series(task.path)
    result = build_detector(variant.detector, dict(variant.params)).update_batch(series.ts_ms, series.values)
    scores = ns.SeriesScores(series.timestamps, result.anomaly_probability.tolist())
    return task.detector, task.variant, task.key, scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nab-dir", type=Path, default=REPO.parent / "shared" / "data" / "nab")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--detectors", default="ema,robust")
    ap.add_argument("--fine", action="store_true", help="the fine grid (about 15 minutes on 2 cores)")
    args = ap.parse_args(argv)
    nab = args.nab_dir
    if not (nab / "data").is_dir():
        print(f"NAB data not found under {nab}; nothing to do.")
        return 0
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    unknown = set(detectors) - set(VARIANTS)
    if unknown:
        ap.error(f"no variants for {sorted(unknown)}; known: {list(VARIANTS)}")
    windows = ns.load_windows(nab / "labels" / "combined_windows.json")
    profiles = ns.load_profiles(nab / "config" / "profiles.json")
    files = sorted(bt.find_csvs(nab / "data"), key=lambda p: -p.stat().st_size)
    tasks = [Task(d, v, p, p.relative_to(nab / "data").as_posix()) for d in detectors for v in VARIANTS[d]
             for p in files]

    start = time.monotonic()
    scores: dict[str, dict[str, dict[str, ns.SeriesScores]]] = {d: {v: {} for v in VARIANTS[d]} for d in detectors}
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        for i, (det, variant, key, s) in enumerate(pool.imap_unordered(run_task, tasks, chunksize=4), 1):
            scores[det][variant][key] = s
            if i % 155 == 0:
                print(f"  {i}/{len(tasks)} runs, {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    print(f"NAB {nab}: {len(files)} series, {len(tasks) // len(files)} variants, "
          f"{time.monotonic() - start:.0f} s on {args.jobs} processes.")

    for det in detectors:
        names = list(VARIANTS[det])
        prepared = {n: ns.prepare_corpus(bt.match_to_labels(scores[det][n], windows), windows) for n in names}
        print(f"\n`{det}`: in-sample and CV (threshold held out), NAB standard / reward_low_FP / "
              f"reward_low_FN; TP/FP/FN and threshold at the standard in-sample optimum:\n")
        print("| variant | in-sample | CV (threshold) | TP/FP/FN | threshold |")
        print("|---|---:|---:|---:|---:|")
        for name in names:
            whole = [ns.score_prepared(prepared[name], p, profiles[p]) for p in PROFILES]
            cv = [cross_validate({name: prepared[name]}, profiles[p], [name])[0] for p in PROFILES]
            st = whole[0]
            print(f"| {name} | {' / '.join(f'{w.score:.2f}' for w in whole)} | "
                  f"{' / '.join(f'{c.score:.2f}' for c in cv)} | {st.tp}/{st.fp}/{st.fn} | {st.threshold:.9g} |")
        print(f"\n`{det}`: leave-one-folder-out selection among its variants (variant and threshold chosen on "
              "4 folders, the 5th scored):\n")
        print("| profile | CV score | TP/FP/FN held out | chosen per held-out folder |")
        print("|---|---:|---:|---|")
        for prof in PROFILES:
            cv, chosen = cross_validate(prepared, profiles[prof], names)
            print(f"| {prof} | {cv.score:.2f} | {cv.tp}/{cv.fp}/{cv.fn} | {'; '.join(chosen)} |")
            if prof == "standard":
                picks = Counter(c.split(": ", 1)[1] for c in chosen)
        print(f"\nMost often chosen for standard: {picks.most_common(1)[0][0]} "
              f"({picks.most_common(1)[0][1]} of 5 folds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
