"""Maintenance windows of the job's config, mirrored as Alertmanager silences.

The windows are a stream's ``incidents.maintenance``; the notifier reads them from the job's
config file with the job's own loader (``jobs.config.load_config``, :mod:`incidents.rules`), so
both read, and refuse, the config the same way::

    streams:
      - name: web
        incidents:
          maintenance:
            - {name: deploy-42, applications: "checkout*", from: "2026-12-06T18:00:00Z", to: "2026-12-06T19:00:00Z"}
            - {name: nightly-backup, applications: "db-*", weekdays: [mon, tue, wed, thu, fri],
               start: "02:00", end: "03:30", timezone: Europe/Berlin, freeze_model: true}

Inside a window the job opens no incident. The notifier (``tools/notify.py``) mirrors each
window's current or next occurrence as a silence (``POST /api/v2/silences``), matching
``alertname="AnomalyIncident"`` and ``application`` by the regular expression of the glob
(``*`` any run, ``?`` one character, ``[abc]``/``[!abc]`` a class; Alertmanager anchors it), so
alerts of incidents that were already open when the window began do not page either.
Silences are recognised by their comment (window name and occurrence), so a restart or a
refresh never creates a second one for the same occurrence.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from incidents.rules import Maintenance
from jobs.config import JobConfig
from tools.notify_targets import ALERTNAME, AlertmanagerTarget, iso_z

CREATED_BY = "anomaly-notify"
_RE_SPECIAL = set("\\.+*?()|[]{}^$")


def occurrence(window: Maintenance, now: datetime) -> tuple[datetime, datetime] | None:
    """The window's occurrence going on at ``now``, else its next one; None when none is left."""
    if window.from_ms is not None and window.to_ms is not None:
        begin = datetime.fromtimestamp(window.from_ms / 1000, tz=timezone.utc)
        finish = datetime.fromtimestamp(window.to_ms / 1000, tz=timezone.utc)
        return (begin, finish) if finish > now else None
    zone = ZoneInfo(window.timezone)
    today = now.astimezone(zone).date()
    for offset in range(-1, 9):
        day = today + timedelta(days=offset)
        if day.weekday() not in window.weekdays:
            continue
        midnight = datetime.combine(day, datetime.min.time(), tzinfo=zone)
        begin = _local(midnight, window.start_minute)
        end_day = 1 if window.end_minute <= window.start_minute else 0
        finish = _local(midnight + timedelta(days=end_day), window.end_minute)
        if finish > now:
            return begin, finish
    return None


def _local(midnight: datetime, minute: int) -> datetime:
    """``minute`` minutes after local midnight (24:00 = the next midnight), as UTC wall time."""
    days, rest = divmod(minute, 1440)
    day = (midnight + timedelta(days=days)).date()
    local = datetime.combine(day, datetime.min.time(), tzinfo=midnight.tzinfo) + timedelta(minutes=rest)
    return local.astimezone(timezone.utc)


def glob_to_regex(glob: str) -> str:
    """An RE2 (Alertmanager) regular expression matching the same names as the shell glob."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        char = glob[i]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[" and (close := glob.find("]", i + 2)) != -1:
            body = glob[i + 1 : close]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\").replace("[", "\\[").replace("^", "\\^")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = close
        else:
            out.append("\\" + char if char in _RE_SPECIAL else char)
        i += 1
    return "".join(out)


def windows_of(job: JobConfig) -> tuple[Maintenance, ...]:
    """Every stream's maintenance windows (as the job parsed them); one in two streams counts once."""
    windows: list[Maintenance] = []
    for stream in job.streams:
        windows.extend(w for w in stream.incidents.maintenance if w not in windows)
    return tuple(windows)


def silence_for(window: Maintenance, starts: datetime, ends: datetime) -> dict[str, Any]:
    """The Alertmanager v2 silence of one occurrence."""
    return {
        "matchers": [
            {"name": "alertname", "value": ALERTNAME, "isRegex": False, "isEqual": True},
            {"name": "application", "value": glob_to_regex(window.applications), "isRegex": True, "isEqual": True},
        ],
        "startsAt": iso_z(starts),
        "endsAt": iso_z(ends),
        "createdBy": CREATED_BY,
        "comment": f"maintenance window {window.name} ({window.applications}): {iso_z(starts)} - {iso_z(ends)}",
    }


def sync_silences(target: AlertmanagerTarget, windows: tuple[Maintenance, ...], now: datetime) -> list[str]:
    """Create the silence of each window's current or next occurrence unless it exists; what was done."""
    existing = {
        s.get("comment")
        for s in target.silences()
        if s.get("createdBy") == CREATED_BY and (s.get("status") or {}).get("state") in ("active", "pending")
    }
    done = []
    for window in windows:
        when = occurrence(window, now)
        if when is None:
            continue
        silence = silence_for(window, *when)
        if silence["comment"] in existing:
            continue
        target.create_silence(silence)
        done.append(f"silence created: {silence['comment']} (application =~ {glob_to_regex(window.applications)})")
    return done
