"""Where the notifier sends incidents: Prometheus Alertmanager's v2 API and a generic JSON webhook.

An incident record (one per transition, on the ``incidents`` topic) becomes:

* an **Alertmanager alert** (``POST /api/v2/alerts``): labels ``alertname="AnomalyIncident"``,
  ``application``, ``detector``, ``severity``, ``incident_id``; annotations ``summary``,
  ``explanation``, ``value``, ``band`` (and ``state``, ``severity_now``, ``windows``);
  ``startsAt`` = ``opened_at``; ``endsAt`` a time ``alert_ttl`` ahead while open, pushed forward by
  every re-post (as Prometheus does), so an alert that stops being re-posted ends by itself; once
  resolved, the end of the time the notifier keeps it firing (the incident can still reopen under
  the same id until then: incidents/paging.py), or ``resolved_at`` when it is not kept firing;
  ``generatorURL`` = the dashboard's incident page.
  Alertmanager identifies an alert by its label set, so the labels of an incident must never
  change: the ``severity`` label is the severity the incident had when the notifier first saw it
  (its opening), kept for the incident's life; a later rise is in the ``severity_now`` annotation
  and on the dashboard, and does not page a second time. Routing on ``severity`` therefore routes
  on the opening severity (see the README's "Notifications").
* a **webhook POST** of the record, once per transition, with one field added, ``notification``:
  ``firing`` (page: the incident opened, or its alert had ended and it fires again), ``update`` (the
  alert was firing and still is, a reopen within the merge gap included) or ``resolved``
  (incidents/paging.py), and the header ``Idempotency-Key: <incident_id>:<seq>`` so a receiver can
  drop the repeat a crash can cause.

Both raise :class:`TargetUnavailable` for what is worth retrying (connection refused, timeout,
5xx, 408, 429) and :class:`TargetRejected` for a 4xx answer, which retrying cannot fix (the
notifier dead-letters the record).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

ALERTNAME = "AnomalyIncident"
STATES = ("open", "flapping", "no_data", "resolved")
SEVERITIES = ("info", "warning", "critical")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
# fields every incident record must have (the contract's; others are optional for the notifier)
_REQUIRED = {
    "incident_id": str,
    "seq": int,
    "transition": str,
    "state": str,
    "application": str,
    "detector": str,
    "opened_at": str,
    "severity": str,
}


class TargetUnavailable(RuntimeError):
    """The target did not accept the post for a reason that may pass: retry with backoff."""


class TargetRejected(RuntimeError):
    """The target answered 4xx: the post itself is wrong, retrying cannot help."""

    def __init__(self, target: str, status: int, body: str) -> None:
        super().__init__(f"{target} answered {status}: {body[:300]}")
        self.status = status
        self.body = body


class InvalidIncident(ValueError):
    """The record is not an incident record of the contract; the message says which field."""


def parse_incident(value: bytes | None) -> dict[str, Any]:
    """The incident record of a Kafka value, checked for the fields the notifier relies on."""
    if value is None:
        raise InvalidIncident("value: the record has no value (tombstone)")
    try:
        record = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidIncident(f"value: not UTF-8 JSON ({err})") from None
    if not isinstance(record, dict):
        raise InvalidIncident("value: not a JSON object")
    for name, kind in _REQUIRED.items():
        got = record.get(name)
        if not isinstance(got, kind) or isinstance(got, bool):
            raise InvalidIncident(f"{name}: missing or not a {kind.__name__} (got {got!r})")
    if not _ID_RE.match(record["incident_id"]):
        raise InvalidIncident(f"incident_id: must be 32 lowercase hex characters, got {record['incident_id']!r}")
    if record["seq"] < 1:
        raise InvalidIncident(f"seq: must be 1 or more, got {record['seq']}")
    if record["state"] not in STATES:
        raise InvalidIncident(f"state: must be one of {', '.join(STATES)}, got {record['state']!r}")
    if record["severity"] not in SEVERITIES:
        raise InvalidIncident(f"severity: must be one of {', '.join(SEVERITIES)}, got {record['severity']!r}")
    if not record["application"]:
        raise InvalidIncident("application: empty")
    for name in ("opened_at", "resolved_at"):
        if record.get(name) is not None:
            try:
                parse_ts(record[name])
            except (TypeError, ValueError):
                raise InvalidIncident(f"{name}: not an ISO-8601 timestamp: {record[name]!r}") from None
    if record["state"] == "resolved" and not record.get("resolved_at"):
        raise InvalidIncident("resolved_at: required when state is resolved")
    return record


def parse_ts(text: str) -> datetime:
    """An aware UTC datetime from ISO-8601 text (``Z`` or an offset)."""
    value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def iso_z(ts: datetime) -> str:
    """ISO-8601 with milliseconds and ``Z``."""
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def is_resolved(record: dict[str, Any]) -> bool:
    return bool(record["state"] == "resolved")


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def _kind(explanation: Any) -> str | None:
    if not isinstance(explanation, str):
        return None
    try:
        parsed = json.loads(explanation)
    except ValueError:
        return None
    kind = parsed.get("kind") if isinstance(parsed, dict) else None
    return kind if isinstance(kind, str) else None


def summary(record: dict[str, Any]) -> str:
    """One line an on-call engineer reads first."""
    what = _kind(record.get("explanation")) or "anomaly"
    window = record.get("agg_window_millis")
    agg = f"{record.get('agg_function', '?')} over {int(window) // 1000} s" if isinstance(window, int) else "points"
    text = (
        f"{record['application']}: {what} ({record['detector']}, {agg}), {record['state']} since "
        f"{record['opened_at']}; peak {_number(record.get('peak_value'))} at {record.get('peak_ts') or '?'}"
    )
    if record.get("resolution"):
        text += f"; resolved: {record['resolution']}"
    return text


def to_alert(
    record: dict[str, Any], label_severity: str, generator_base: str, now: datetime, alert_ttl_s: float,
    firing_until: datetime | None = None,
) -> dict[str, Any]:
    """The Alertmanager v2 alert of an incident's latest record (see the module docstring);
    ``firing_until``: for a resolved record, the end of the time its alert is kept firing."""
    starts = parse_ts(record["opened_at"])
    if is_resolved(record) and firing_until is not None:
        ends = firing_until
    elif is_resolved(record):
        # an end in the future (clock skew, synthetic data) would keep it firing: never later than now
        ends = min(parse_ts(record["resolved_at"]), now)
    else:
        ends = max(now, starts) + timedelta(seconds=alert_ttl_s)
    lower, upper = record.get("value_lower_limit"), record.get("value_upper_limit")
    band = "" if lower is None and upper is None else f"[{_number(lower)}, {_number(upper)}]"
    return {
        "labels": {
            "alertname": ALERTNAME,
            "application": record["application"],
            "detector": record["detector"],
            "severity": label_severity,
            "incident_id": record["incident_id"],
        },
        "annotations": {
            "summary": summary(record),
            "explanation": record.get("explanation") or "",
            "value": _number(record.get("peak_value")),
            "band": band,
            "state": record["state"],
            "severity_now": record["severity"],
            "windows": _number(record.get("window_count")),
        },
        "startsAt": iso_z(starts),
        "endsAt": iso_z(ends),
        "generatorURL": f"{generator_base.rstrip('/')}/incidents/{record['incident_id']}",
    }


@dataclass(frozen=True)
class HttpTarget:
    """POSTs JSON to a URL with a timeout, turning every failure into one of the two errors above."""

    name: str
    url: str
    timeout_s: float

    def post(self, url: str, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", "replace").strip() if err.fp else ""
            if 400 <= err.code < 500 and err.code not in (408, 429):
                raise TargetRejected(self.name, err.code, text) from None
            raise TargetUnavailable(f"{self.name} answered {err.code}: {text[:200]}") from None
        except (urllib.error.URLError, OSError) as err:  # refused, reset, DNS, timeout
            reason = getattr(err, "reason", err)
            raise TargetUnavailable(f"{self.name} unreachable at {url}: {reason}") from None

    def get(self, url: str) -> Any:
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise TargetUnavailable(f"{self.name} answered {err.code} to GET {url}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise TargetUnavailable(f"{self.name} unreachable at {url}: {getattr(err, 'reason', err)}") from None


class AlertmanagerTarget(HttpTarget):
    """``POST /api/v2/alerts`` (a list of alerts per call) and the silences API."""

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        if alerts:
            self.post(f"{self.url.rstrip('/')}/api/v2/alerts", alerts)

    def silences(self) -> list[dict[str, Any]]:
        out = self.get(f"{self.url.rstrip('/')}/api/v2/silences")
        return out if isinstance(out, list) else []

    def create_silence(self, silence: dict[str, Any]) -> None:
        self.post(f"{self.url.rstrip('/')}/api/v2/silences", silence)


class WebhookTarget(HttpTarget):
    """The record and what it is to a receiver (``notification``), once per transition, with an idempotency key."""

    def post_transition(self, record: dict[str, Any], notification: str) -> None:
        key = f"{record['incident_id']}:{record['seq']}"
        self.post(self.url, {**record, "notification": notification}, {"Idempotency-Key": key})
