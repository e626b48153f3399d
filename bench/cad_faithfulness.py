"""Faithfulness check of detectors.cad against NAB's published contextOSE (CAD OSE) scores.

Runs :class:`detectors.cad.CADDetector` over the NAB series in ``<repo>/../shared/data/nab``
with NAB's settings (range = the series' own min and max, ``rest_period =
int(probation / 5)``, base threshold 0.75, left semi-contexts <= 7 facts, 15 active
neurons, 3 value bits) and compares every point with
``reference_results/contextOSE/<folder>/contextOSE_<series>.csv``. Then, when
``evaluation.nab_scoring`` is available, prints NAB scores of: the reference scores,
ours with NAB settings, and ours with the range learned online (no min/max given).

    .venv/bin/python bench/cad_faithfulness.py [--only SUBSTRING] [--no-online]

The shared data is read in place and never copied into the repository.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detectors.cad import CADDetector  # noqa: E402

NAB = REPO.parent / "shared" / "data" / "nab"
TOLERANCE = 1e-6
NAB_PARAMS = {
    "base_threshold": 0.75,
    "max_left_semi_contexts_length": 7,
    "max_active_neurons_num": 15,
    "num_norm_value_bits": 3,
}


def read_csv(path: Path, *columns: str) -> tuple[list[str], list[np.ndarray]]:
    """Timestamps and float columns, parsed by pandas as NAB does.

    pandas' default float parser is not always correctly rounded (``99.248`` and
    ``99.24799999999999`` differ by one ulp); NAB's range and bin edges follow it, so
    ``float()`` parsing moves a few points of ec2_request_latency_system_failure
    across a bin edge.
    """
    frame = pd.read_csv(path)
    return frame["timestamp"].astype(str).tolist(), [frame[c].to_numpy(dtype=np.float64) for c in columns]


def nab_rest_period(n_rows: int) -> int:
    probation = min(math.floor(0.15 * n_rows), 0.15 * 5000)
    return int(probation / 5.0)


def run(values: np.ndarray, online: bool) -> np.ndarray:
    params = dict(NAB_PARAMS, rest_period=nab_rest_period(len(values)))
    if not online:
        params.update(min_value=float(values.min()), max_value=float(values.max()))
    det = CADDetector(**params)
    ts = np.arange(len(values), dtype=np.int64)
    return det.update_batch(ts, values).anomaly_probability


def nab_scores(label: str, scores: dict[str, tuple[list[str], np.ndarray]]) -> None:
    try:
        from evaluation import nab_scoring
    except ImportError:
        print(f"{label}: evaluation.nab_scoring not available; NAB score skipped")
        return
    windows = nab_scoring.load_windows(NAB / "labels" / "combined_windows.json")
    profiles = nab_scoring.load_profiles(NAB / "config" / "profiles.json")
    series = {k: nab_scoring.SeriesScores(ts, s.tolist()) for k, (ts, s) in scores.items()}
    table = nab_scoring.score_corpus(series, {k: windows[k] for k in series}, profiles)
    summary = ", ".join(f"{name} {r.score:.2f} (threshold {r.threshold:.4g})" for name, r in table.items())
    print(f"NAB score, {label}: {summary}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run only series whose key contains this")
    ap.add_argument("--no-online", action="store_true", help="skip the online-range run")
    args = ap.parse_args()
    if not (NAB / "data").is_dir() or not (NAB / "reference_results" / "contextOSE").is_dir():
        print(
            f"NAB data not found at {NAB} (expected data/ and reference_results/contextOSE/); nothing to check.",
            file=sys.stderr,
        )
        return 2

    paths = sorted(p for p in (NAB / "data").glob("*/*.csv") if args.only in f"{p.parent.name}/{p.name}")
    ref_all, ours_all, online_all = {}, {}, {}
    close_total = n_total = exact_series = 0
    ours_cat, ref_cat = [], []
    elapsed = 0.0
    print(f"{'series':<58} {'points':>6} {'agree':>7} {'max|diff|':>10} {'seconds':>7}")
    for path in paths:
        key = f"{path.parent.name}/{path.name}"
        ts, (values,) = read_csv(path, "value")
        ref_path = NAB / "reference_results" / "contextOSE" / path.parent.name / f"contextOSE_{path.name}"
        _, (ref,) = read_csv(ref_path, "anomaly_score")
        start = time.perf_counter()
        ours = run(values, online=False)
        seconds = time.perf_counter() - start
        elapsed += seconds
        diff = np.abs(ours - ref)
        close = int((diff < TOLERANCE).sum())
        close_total += close
        n_total += len(ref)
        exact_series += close == len(ref)
        ours_cat.append(ours)
        ref_cat.append(ref)
        ref_all[key], ours_all[key] = (ts, ref), (ts, ours)
        print(f"{key:<58} {len(ref):>6} {close / len(ref):>7.2%} {diff.max():>10.3g} {seconds:>7.1f}")
        if not args.no_online:
            online_all[key] = (ts, run(values, online=True))

    if not paths:
        print("no series selected")
        return 1
    o, r = np.concatenate(ours_cat), np.concatenate(ref_cat)
    corr = float(np.corrcoef(o, r)[0, 1]) if o.std() > 0 and r.std() > 0 else float("nan")
    print(f"\npoints with |diff| < {TOLERANCE:g}: {close_total}/{n_total} = {close_total / n_total:.6%}")
    print(f"correlation with the reference: {corr:.9f}")
    print(f"series matching exactly: {exact_series}/{len(paths)}")
    print(f"CAD time with NAB settings: {elapsed:.1f} s for {n_total} points")
    if len(paths) > 1:
        nab_scores("published contextOSE", ref_all)
        nab_scores("ours, NAB settings", ours_all)
        if online_all:
            nab_scores("ours, online range", online_all)
    return 0 if exact_series == len(paths) else 1


if __name__ == "__main__":
    sys.exit(main())
