"""Incident quality on labelled data: what an on-call engineer would get from ``default`` + incidents.

    .venv/bin/python bench/incident_quality.py [--nab-dir ../shared/data/nab] [--aiops-dir ../shared/data/aiops]
                                               [--detector default] [--jobs 2] [--resolve-minutes 0,30,60]

Every series of each corpus runs through the detector as the backtest does
(tools/backtest.py: state round trips every 1,000 points), then through the
job's incident state machine (incidents/replay.py, default rules: one window at
the threshold opens, resolved after 10 minutes of clean windows, at least 2;
reopened within 30 minutes). Per corpus, against its labelled anomaly windows
(``labels/combined_windows.json``):

* ``notif/window``: notifications inside labelled windows per window that got
  any. A notification is what reaches a receiver through Alertmanager
  (tools/notify.py): an incident ``opened``, or ``reopened`` / ``flapping``
  after it resolved (it fires again); updates do not page (the alert's
  severity label is fixed at opening);
* ``windows w/ incident``: labelled windows with at least one incident opened
  inside, beside ``windows w/ point``: windows where the detector flags at least
  one point (what the per-point output finds);
* ``false inc/series-day``: incidents opened outside every window, per day of
  series;
* ``median first (min)``: from the window's start to its first notification.

The anchor row of each corpus, measured in the same run, is the per-point
output itself (every flagged point a notification: what a consumer without the
incident layer would page on). ``--resolve-minutes`` adds rows with
``resolve_after`` set to that many minutes of clean windows (0: the default
rule), on the same detector output: the hysteresis is the knob that merges an
anomaly's repeated alarms into one incident.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluation import nab_scoring  # noqa: E402
from incidents.replay import cadence_ms, series_incidents  # noqa: E402
from incidents.rules import parse_settings  # noqa: E402
from tools.backtest import find_csvs, read_series, run_detector, series_key  # noqa: E402

DAY_MS = 86_400_000
# what pages through Alertmanager (tools/notify.py): an incident opening, or firing again after it resolved
# (reopened, or reopened into flapping); severity is fixed at opening there, so updates do not page
NOTIFYING = ("opened", "reopened", "flapping")


@dataclass
class SeriesFigures:
    windows: int = 0
    with_point: int = 0
    with_incident: int = 0
    notifications_in: int = 0
    windows_notified: int = 0
    false_incidents: int = 0
    point_notifications_in: int = 0
    false_points: int = 0
    days: float = 0.0
    delays_min: tuple[float, ...] = ()


def _ms(iso: str) -> int:
    return int(np.datetime64(iso.rstrip("Z"), "ms").astype(np.int64))


def notifications(records: list[dict]) -> list[int]:
    """Event times of the transitions that notify a receiver."""
    return [_ms(r["event_ts"]) for r in records if r["transition"] in NOTIFYING]


def figures_of(ts: np.ndarray, flags: np.ndarray, notified: list[int], opened: list[int],
               windows: list[tuple[int, int]]) -> SeriesFigures:
    f = SeriesFigures(windows=len(windows), days=(int(ts[-1]) - int(ts[0])) / DAY_MS if len(ts) else 0.0)
    notes, opens = np.array(notified, dtype=np.int64), np.array(opened, dtype=np.int64)
    points = ts[flags]
    inside_open = np.zeros(len(opens), dtype=bool)
    inside_point = np.zeros(len(points), dtype=bool)
    delays = []
    for start, end in windows:
        in_notes = notes[(notes >= start) & (notes <= end)]
        in_opens = (opens >= start) & (opens <= end)
        in_points = (points >= start) & (points <= end)
        inside_open |= in_opens
        inside_point |= in_points
        f.with_point += bool(in_points.any())
        f.with_incident += bool(in_opens.any()) or bool(len(in_notes))
        f.notifications_in += len(in_notes)
        f.point_notifications_in += int(in_points.sum())
        if len(in_notes):
            f.windows_notified += 1
            delays.append((int(in_notes.min()) - start) / 60_000)
    f.false_incidents = int((~inside_open).sum())
    f.false_points = int((~inside_point).sum())
    f.delays_min = tuple(delays)
    return f


def _one(task: tuple[Path, str, str, list[tuple[int, int]], tuple[int, ...]]) -> list[SeriesFigures]:
    """One series: the detector once, then the incidents under each resolve setting."""
    path, key, detector, windows, resolve_minutes = task
    series = read_series(path)
    result = run_detector(detector, {}, series.ts_ms, series.values)
    flags = np.asarray(result.is_anomaly, dtype=bool)
    out = []
    for minutes in resolve_minutes:
        rules = {"resolve_after": max(2, -(-minutes * 60_000 // cadence_ms(series.ts_ms)))} if minutes else {}
        records = series_incidents(key, detector, series.ts_ms, series.values, result, parse_settings(rules))
        opened = [_ms(r["event_ts"]) for r in records if r["transition"] == "opened"]
        out.append(figures_of(series.ts_ms, flags, notifications(records), opened, windows))
    return out


def corpus(root: Path, detector: str, jobs: int, resolve_minutes: tuple[int, ...]) -> list[list[SeriesFigures]]:
    """Per resolve setting, the figures of every labelled series."""
    data = root / "data"
    labels = nab_scoring.load_windows(root / "labels" / "combined_windows.json")
    tasks = [(p, series_key(p, data), detector, labels.get(series_key(p, data), []), resolve_minutes)
             for p in find_csvs(data)]
    tasks = [t for t in tasks if t[1] in labels]
    if jobs <= 1:
        per_series = [_one(t) for t in tasks]
    else:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            per_series = pool.map(_one, tasks)
    return [[figures[k] for figures in per_series] for k in range(len(resolve_minutes))]


def row(name: str, figures: list[SeriesFigures], points: bool = False) -> str:
    windows = sum(f.windows for f in figures)
    days = sum(f.days for f in figures)
    if points:
        notified = sum(f.with_point for f in figures)
        per_window = sum(f.point_notifications_in for f in figures) / max(notified, 1)
        false = sum(f.false_points for f in figures) / max(days, 1e-9)
        found, delay = notified, "-"
    else:
        notified = sum(f.windows_notified for f in figures)
        per_window = sum(f.notifications_in for f in figures) / max(notified, 1)
        false = sum(f.false_incidents for f in figures) / max(days, 1e-9)
        found = sum(f.with_incident for f in figures)
        delays = [d for f in figures for d in f.delays_min]
        delay = f"{np.median(delays):.0f}" if delays else "-"
    with_point = sum(f.with_point for f in figures)
    return (f"{name:<34} {len(figures):>6} {windows:>7} {per_window:>12.2f} {found:>10} {with_point:>10} "
            f"{false:>12.3f} {delay:>11}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nab-dir", type=Path, default=REPO.parent / "shared" / "data" / "nab")
    parser.add_argument("--aiops-dir", type=Path, default=REPO.parent / "shared" / "data" / "aiops")
    parser.add_argument("--detector", default="default")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--resolve-minutes", default="0,30,60",
                        help="comma list: resolve after this many minutes of clean windows (0: the default rule)")
    args = parser.parse_args(argv)
    resolve_minutes = tuple(int(m) for m in args.resolve_minutes.split(","))
    print(f"{'corpus / output':<34} {'series':>6} {'windows':>7} {'notif/window':>12} {'w/ incid.':>10} "
          f"{'w/ point':>10} {'false/s-day':>12} {'median 1st':>11}")
    for name, root in (("NAB", args.nab_dir), ("AIOps KPI", args.aiops_dir)):
        if not (root / "labels" / "combined_windows.json").is_file():
            print(f"{name}: no labels under {root}, skipped")
            continue
        by_setting = corpus(root, args.detector, args.jobs, resolve_minutes)
        print(row(f"{name}: {args.detector} points (anchor)", by_setting[0], points=True))
        for minutes, figures in zip(resolve_minutes, by_setting, strict=True):
            setting = f"resolve {minutes} min" if minutes else "default rules"
            print(row(f"{name}: + incidents, {setting}", figures))
    print("notif/window: notifications (opened, reopened, flapping) inside labelled windows per window that got "
          "any; w/ incid.: windows with an incident; w/ point: windows with a flagged point; false/s-day: "
          "incidents (anchor: points) outside every window per series-day; median 1st: minutes from window start "
          "to the first notification")
    return 0


if __name__ == "__main__":
    sys.exit(main())
