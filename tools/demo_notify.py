"""The demo's notification step: the incidents the job opened, handed to a real Alertmanager.

After the job, :func:`run_notifications` starts a local Alertmanager (Debian's package, see
:mod:`tools.local_alertmanager`) whose receiver is a webhook in this process, runs the notifier
(``python -m tools.notify``, its log in ``<work>/notify.log``) on the job's ``incidents`` topic until
every incident of the job's ``incidents`` table has been notified, and returns the lines the demo
prints: the judged detector's incidents with the notifications the webhook received, and per
injected anomaly the incidents and notifications it caused (one each, not one per flagged window).
It fails (returns False) when an incident got no notification or one twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tools.incidents_repository import IncidentsRepository
from tools.local_alertmanager import AlertmanagerServer, alertmanager_binary, start_receiver
from tools.synthetic import InjectedAnomaly

REPO = Path(__file__).resolve().parent.parent
SETTLE_S = 3.0  # after the last expected notification: time for a duplicate to show up


def _hhmm(ms: int | None) -> str:
    return "open" if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%H:%M")


def _wanted(rows: list[dict[str, Any]]) -> Counter:
    want: Counter = Counter()
    for r in rows:
        want[(r["incident_id"], "firing")] = 1
        if r["state"] == "resolved":
            want[(r["incident_id"], "resolved")] = 1
    return want


def _notify(bootstrap_servers: str, work: Path, am: AlertmanagerServer) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "tools.notify", "--bootstrap-servers", bootstrap_servers,
        "--alertmanager-url", am.url, "--group", "demo-notify", "--repost-seconds", "2",
        "--alert-ttl-seconds", "60", "--resolve-hold-seconds", "2", "--max-backoff-seconds", "5",
        # the job replays a day in seconds: a resolve is kept firing 3 s of wall time, not its 30-minute merge gap
        "--keep-firing-seconds", "3",
    ]
    with open(work / "notify.log", "w") as log:
        return subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                stderr=subprocess.STDOUT)


def _wait(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    return True


def collect(bootstrap_servers: str, work: Path, rows: list[dict[str, Any]], timeout_s: float = 120) -> Counter:
    """Run Alertmanager and the notifier until ``rows``' notifications arrived; what the webhook got."""
    receiver = start_receiver()
    am = AlertmanagerServer.create(alertmanager_binary(), work / "alertmanager", receiver)
    notifier = None
    try:
        am.start()
        notifier = _notify(bootstrap_servers, work, am)
        want = _wanted(rows)
        ids = {r["incident_id"] for r in rows}
        _wait(lambda: Counter(receiver.notifications(ids)) >= want, timeout_s)
        time.sleep(SETTLE_S)
        return Counter(receiver.notifications(ids))
    finally:
        if notifier is not None:
            notifier.send_signal(signal.SIGTERM)
            try:
                notifier.wait(20)
            except subprocess.TimeoutExpired:
                notifier.kill()
                notifier.wait()
        am.stop()
        receiver.server.shutdown()
        receiver.server.server_close()


def _span_ms(anomaly: InjectedAnomaly, window_ms: int) -> tuple[int, int]:
    def ms(ts: str) -> int:
        return round(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)

    start = ms(anomaly.ts) - ms(anomaly.ts) % window_ms
    return start, (ms(anomaly.end_ts) if anomaly.end_ts else start + 3_600_000)


def report(rows: list[dict[str, Any]], got: Counter, anomalies: list[InjectedAnomaly], judge: str,
           window_ms: int) -> tuple[list[str], bool]:
    """The printed lines and whether every incident was notified exactly once (open and resolve)."""
    want = _wanted(rows)
    lost = sum(max(0, n - got[k]) for k, n in want.items())
    twice = sum(max(0, n - want[k]) for k, n in got.items())
    judged = [r for r in rows if r["detector"] == judge]
    lines = [f"{'application':<11} {'opened':>6} {'resolved':>8} {'severity':<8} {'windows':>7} {'state':<9} "
             f"notifications ({judge})", "-" * 72]
    for r in sorted(judged, key=lambda r: (r["application"], r["opened_at"])):
        sent = ", ".join(f"{s} {got[(r['incident_id'], s)]}" for s in ("firing", "resolved")
                         if got[(r["incident_id"], s)])
        lines.append(f"{r['application']:<11} {_hhmm(r['opened_at']):>6} {_hhmm(r['resolved_at']):>8} "
                     f"{r['severity']:<8} {r['window_count']:>7} {r['state']:<9} {sent or 'none'}")
    lines.append("")
    for anomaly in anomalies:
        start, end = _span_ms(anomaly, window_ms)
        hit = [r for r in judged if r["application"] == anomaly.application and r["opened_at"] < end
               and (r["resolved_at"] is None or r["resolved_at"] >= start)]
        pages = sum(got[(r["incident_id"], "firing")] for r in hit)
        lines.append(f"injected {anomaly.kind} {anomaly.ts[11:16]} in {anomaly.application}: "
                     f"{len(hit)} incident(s), {pages} notification(s)")
    others = Counter(r["detector"] for r in rows if r["detector"] != judge)
    lines.append(
        f"notifications: {sum(n for (_, s), n in got.items() if s == 'firing')} opened and "
        f"{sum(n for (_, s), n in got.items() if s == 'resolved')} resolved for {len(rows)} incidents "
        f"({', '.join(f'{d} {n}' for d, n in sorted(others.items())) or 'no other detector'} beside {judge}); "
        f"lost {lost}, twice {twice} (Alertmanager's webhook, notifier log: notify.log)"
    )
    return lines, lost == 0 and twice == 0


def run_notifications(bootstrap_servers: str, work: Path, anomalies: list[InjectedAnomaly], judge: str,
                      window_ms: int) -> tuple[list[str], bool]:
    """The demo's step (see the module docstring); a missing Alertmanager skips it with a line."""
    incidents = IncidentsRepository(f"jdbc:sqlite:{work / 'anomalies.db'}")
    if not incidents.available():
        return ["incidents: the job wrote no incident tables"], False
    rows = incidents.incidents(limit=100_000)
    try:
        got = collect(bootstrap_servers, work, rows)
    except RuntimeError as err:  # no Alertmanager binary, or it did not start
        return [f"notifications: skipped ({err}; scripts/alertmanager.sh installs it)"], True
    return report(rows, got, anomalies, judge, window_ms)
