"""What an incident transition is to whoever gets notified: the notifier's rule, shared with the bench.

An incident's alert *fires* from its first record on. A clean resolution does not end it at once: the
incident can still reopen under the same id until the record's ``reopen_until`` (resolved + the
application's ``merge_gap_millis``, incidents/machine.py), so the alert is kept firing that long
after the resolve (``keep firing``, as Prometheus's ``keep_firing_for``). A reopen (or a flapping
reopen) inside that time continues the firing alert; when it does not come, the alert ends at the end
of the hold. Each record handled is then one of:

* :data:`FIRING`: the alert starts firing (an ``opened`` record, or any record of an open incident
  whose alert had ended: a reopen after the hold); Alertmanager notifies, and so should a webhook's
  receiver: this is a page;
* :data:`UPDATE`: the alert was firing and still is (an update, ``no_data``, feedback, a reopen or
  flapping inside the hold, a feedback record on an already resolved incident);
* :data:`RESOLVED`: the incident resolved (``resolved`` or ``split``). Its alert ends at once when
  the resolve cannot reopen (feedback, ``max_duration``) or the hold is 0, else at the end of the hold
  (:func:`step`'s returned time): Alertmanager's resolved notification comes then.

:func:`step` is the rule, applied to one incident's records in order; ``tools/notify.py`` runs it on
wall time (the resolve's hold counted from when the job produced it) and ``bench/incident_quality.py``
on event time through :func:`kinds`, so the bench counts what the notifier sends.

>>> recs = [{"transition": "opened", "state": "open", "event_ts": "2024-01-01T00:00:00Z"},
...         {"transition": "resolved", "state": "resolved", "event_ts": "2024-01-01T01:00:00Z",
...          "reopen_until": "2024-01-01T01:30:00Z"},
...         {"transition": "reopened", "state": "open", "event_ts": "2024-01-01T01:20:00Z"}]
>>> kinds(recs)
['firing', 'resolved', 'update']
>>> kinds(recs, keep_firing_ms=0)
['firing', 'resolved', 'firing']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

FIRING, UPDATE, RESOLVED = "firing", "update", "resolved"
KINDS = (FIRING, UPDATE, RESOLVED)
OPEN = math.inf  # the alert time of an open incident: firing with no end
ENDED = -math.inf  # the alert time of an incident never seen, or whose alert ended


def ms_of(text: str) -> int:
    """Epoch milliseconds of an ISO-8601 time (``Z`` or an offset; none: UTC)."""
    value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return round(value.timestamp() * 1000)


def hold_ms(record: Mapping[str, Any], keep_firing_ms: float | None = None) -> float:
    """How long after this record the incident's alert keeps firing if it resolves here: what is left of
    its merge gap (``reopen_until`` - ``event_ts``), at most ``keep_firing_ms`` (None: no limit; 0: the
    alert ends at the resolve); 0 for a record without ``reopen_until`` (it cannot reopen)."""
    until = record.get("reopen_until")
    if not until or record.get("state") != "resolved":
        return 0.0
    left = float(ms_of(until) - ms_of(record["event_ts"]))
    if keep_firing_ms is not None:
        left = min(left, keep_firing_ms)
    return max(0.0, left)


def step(alert_until: float, record: Mapping[str, Any], now_ms: float, anchor_ms: float | None = None,
         keep_firing_ms: float | None = None) -> tuple[str, float]:
    """``(kind, alert_until after)`` of one record of an incident handled at ``now_ms``.

    ``alert_until`` is the incident's alert before it: :data:`OPEN` (firing), a time (a resolved incident
    whose alert fires until then) or :data:`ENDED`. A resolve's hold counts from ``anchor_ms`` (default
    ``now_ms``): the notifier gives the time the job produced the record, the same after a restart.
    """
    firing = alert_until >= now_ms  # Alertmanager: an alert ends after its endsAt, not at it
    if record["state"] != "resolved":
        return (UPDATE if firing else FIRING), OPEN
    start = now_ms if anchor_ms is None else anchor_ms
    kind = RESOLVED if record["transition"] in ("resolved", "split") else UPDATE
    if not firing:  # a resolved record never revives an alert that ended
        return kind, alert_until
    return kind, min(alert_until, start + hold_ms(record, keep_firing_ms))


def kinds(records: Iterable[Mapping[str, Any]], keep_firing_ms: float | None = None) -> list[str]:
    """The kind of each record (any incidents, in event order per incident), on event time: what the
    notifier sends when the job's records reach it as their event time passes."""
    alerts: dict[str, float] = {}
    out = []
    for record in records:
        at = ms_of(record["event_ts"])
        kind, alerts[record.get("incident_id", "")] = step(
            alerts.get(record.get("incident_id", ""), ENDED), record, at, keep_firing_ms=keep_firing_ms)
        out.append(kind)
    return out
