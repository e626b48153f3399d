"""Incident rules and maintenance windows: what the incident state machine is configured with.

A stream's ``incidents`` section (YAML, validated before Spark starts)::

    incidents:
      enabled: true               # default: on when the stream has a results sink
      open_k: 1                   # open when k of the last n windows are anomalous (default 1 of 1:
      open_n: 1                   #   one window at or above the detector's threshold, its is_anomaly)
      resolve_after: null         # clean windows in a row that resolve; default: an hour of windows,
                                  #   at least 2 (1-minute windows: 60, 5-minute windows: 12)
      update_margin: 1.0          # an update is sent when severity rises, or the peak score
                                  #   -log10(1 - probability) grows by this much (1.0 = ten times rarer)
      merge_gap_millis: 1800000   # an anomaly within 30 min of a clean resolution reopens that incident
      max_duration_millis: 86400000   # an incident open longer is split (resolved, a new one opened)
      flapping_reopens: 3         # more reopens than this within flapping_window_millis: "flapping"
      flapping_window_millis: 3600000
      no_data_after_millis: null  # an open incident whose application sent nothing for this long
                                  #   (the bucket's watermark past its last window): "no_data";
                                  #   default: 5 windows, at least 15 minutes
      retention_millis: 604800000 # a resolved incident is kept (for feedback and reopening) this long
      severity: {warning_probability: 0.999, critical_probability: 0.99999,
                 escalate_kinds: [level_shift, sustained, new_range]}
      overrides:                  # per application pattern (fnmatch glob), first match wins
        - {applications: "batch-*", open_k: 3, open_n: 5}
      maintenance:
        - {name: deploy, applications: "checkout*", from: "2024-01-01T02:00:00Z", to: "2024-01-01T03:00:00Z"}
        - {name: nightly, applications: "*", weekdays: [mon, tue, wed, thu, fri], start: "01:00",
           end: "02:30", timezone: Europe/Berlin, freeze_model: true}

Severity: the probability gives ``info`` (below ``warning_probability``),
``warning`` or ``critical`` (at or above ``critical_probability``); an
explanation of a kind in ``escalate_kinds`` (a persistent change rather than one
odd window) raises it one step.

Pure Python: parsed here from plain dicts so that the job (jobs/config.py) and
the backtest share one reading; errors are :class:`IncidentConfigError` naming
the field (relative to the section).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

SEVERITIES = ("info", "warning", "critical")
EXPLANATION_KINDS = ("spike", "dip", "level_shift", "new_range", "pattern", "sustained")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$|^24:00$")
_RULE_KEYS = (
    "open_k", "open_n", "resolve_after", "update_margin", "merge_gap_millis", "max_duration_millis",
    "flapping_reopens", "flapping_window_millis", "no_data_after_millis", "severity",
)
SECTION_KEYS = ("enabled", *_RULE_KEYS, "retention_millis", "overrides", "maintenance")


class IncidentConfigError(ValueError):
    """A bad incidents setting; ``field`` is its path inside the ``incidents`` section."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Rules:
    """The rules for one application (the stream's defaults, or an override's)."""

    open_k: int = 1
    open_n: int = 1
    resolve_after: int | None = None  # None: from the window length (resolve_windows)
    update_margin: float = 1.0
    merge_gap_ms: int = 30 * 60_000
    max_duration_ms: int = 24 * 3_600_000
    flapping_reopens: int = 3
    flapping_window_ms: int = 3_600_000
    no_data_after_ms: int | None = None  # None: from the window length (no_data_ms)
    warning_probability: float = 0.999
    critical_probability: float = 0.99999
    escalate_kinds: tuple[str, ...] = ("level_shift", "sustained", "new_range")

    def resolve_windows(self, window_ms: int) -> int:
        """Clean windows in a row that resolve: as configured, else an hour of windows, at least 2 and at most 60.

        An hour, not minutes: an anomaly's alarms often come in bursts tens of minutes apart, and each
        resolve-then-reopen pages again (bench/incident_quality.py, docs/incidents.md).
        """
        if self.resolve_after is not None:
            return self.resolve_after
        return max(2, min(60, math.ceil(3_600_000 / max(window_ms, 1))))

    def no_data_ms(self, window_ms: int) -> int:
        if self.no_data_after_ms is not None:
            return self.no_data_after_ms
        return max(5 * window_ms, 15 * 60_000)


@dataclass(frozen=True)
class Maintenance:
    """A maintenance window: one-off (``from_ms``/``to_ms``) or recurring (weekdays + local time range)."""

    name: str
    applications: str  # fnmatch glob
    freeze_model: bool = False
    from_ms: int | None = None
    to_ms: int | None = None
    weekdays: tuple[int, ...] = ()  # 0 = Monday
    start_minute: int = 0  # minutes after local midnight
    end_minute: int = 0  # exclusive; may be below start_minute (the range crosses midnight)
    timezone: str = "UTC"

    def matches(self, application: str) -> bool:
        return fnmatch.fnmatchcase(application, self.applications)

    def contains(self, ts_ms: np.ndarray) -> np.ndarray:
        """Which event times (epoch ms) fall inside this window, vectorised."""
        ts_ms = np.asarray(ts_ms, dtype=np.int64)
        if self.from_ms is not None and self.to_ms is not None:
            return (ts_ms >= self.from_ms) & (ts_ms < self.to_ms)
        local = pd.DatetimeIndex(pd.to_datetime(ts_ms, unit="ms", utc=True)).tz_convert(ZoneInfo(self.timezone))
        minute = np.asarray(local.hour * 60 + local.minute)
        day = np.asarray(local.dayofweek)
        if self.start_minute < self.end_minute:
            return np.isin(day, self.weekdays) & (minute >= self.start_minute) & (minute < self.end_minute)
        # crosses midnight: the evening part belongs to the listed day, the morning part to the next
        evening = np.isin(day, self.weekdays) & (minute >= self.start_minute)
        morning = np.isin((day - 1) % 7, self.weekdays) & (minute < self.end_minute)
        return evening | morning


@dataclass(frozen=True)
class IncidentSettings:
    """A stream's incident configuration."""

    enabled: bool = True
    rules: Rules = field(default_factory=Rules)
    overrides: tuple[tuple[str, Rules], ...] = ()  # (glob, rules), first match wins
    maintenance: tuple[Maintenance, ...] = ()
    retention_ms: int = 7 * 86_400_000

    def rules_for(self, application: str) -> Rules:
        for pattern, rules in self.overrides:
            if fnmatch.fnmatchcase(application, pattern):
                return rules
        return self.rules

    @property
    def history_width(self) -> int:
        """Anomalous window times kept per track for the k-of-n rule: the largest k - 1."""
        return max([self.rules.open_k, *[r.open_k for _, r in self.overrides]]) - 1

    @property
    def freezes(self) -> bool:
        return any(m.freeze_model for m in self.maintenance)


# -- parsing ---------------------------------------------------------------------------
def _int(raw: Any, name: str, minimum: int, default: int | None) -> int | None:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise IncidentConfigError(name, f"must be an integer, got {raw!r}")
    if raw < minimum:
        raise IncidentConfigError(name, f"must be >= {minimum}, got {raw}")
    return raw


def _float(raw: Any, name: str, low: float, high: float, default: float) -> float:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not low <= float(raw) <= high:
        raise IncidentConfigError(name, f"must be a number in [{low}, {high}], got {raw!r}")
    return float(raw)


def _mapping(raw: Any, name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise IncidentConfigError(name, f"must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise IncidentConfigError(f"{name}.{unknown[0]}" if name else unknown[0],
                                  f"unknown setting (allowed: {', '.join(allowed)})")
    return raw


def _rules(raw: dict[str, Any], base: Rules, prefix: str) -> Rules:
    def name(key: str) -> str:
        return f"{prefix}{key}"

    sev = _mapping(raw.get("severity"), name("severity"),
                   ("warning_probability", "critical_probability", "escalate_kinds"))
    kinds = sev.get("escalate_kinds", base.escalate_kinds)
    if not isinstance(kinds, (list, tuple)) or any(k not in EXPLANATION_KINDS for k in kinds):
        raise IncidentConfigError(name("severity.escalate_kinds"),
                                  f"must be a list of {', '.join(EXPLANATION_KINDS)}, got {kinds!r}")
    rules = Rules(
        open_k=_int(raw.get("open_k"), name("open_k"), 1, base.open_k) or 1,
        open_n=_int(raw.get("open_n"), name("open_n"), 1, base.open_n) or 1,
        resolve_after=_int(raw.get("resolve_after"), name("resolve_after"), 1, base.resolve_after),
        update_margin=_float(raw.get("update_margin"), name("update_margin"), 0.0, 100.0, base.update_margin),
        merge_gap_ms=_int(raw.get("merge_gap_millis"), name("merge_gap_millis"), 0, base.merge_gap_ms) or 0,
        max_duration_ms=_int(raw.get("max_duration_millis"), name("max_duration_millis"), 1,
                             base.max_duration_ms) or 1,
        flapping_reopens=_int(raw.get("flapping_reopens"), name("flapping_reopens"), 1, base.flapping_reopens) or 1,
        flapping_window_ms=_int(raw.get("flapping_window_millis"), name("flapping_window_millis"), 1,
                                base.flapping_window_ms) or 1,
        no_data_after_ms=_int(raw.get("no_data_after_millis"), name("no_data_after_millis"), 1,
                              base.no_data_after_ms),
        warning_probability=_float(sev.get("warning_probability"), name("severity.warning_probability"), 0.0, 1.0,
                                   base.warning_probability),
        critical_probability=_float(sev.get("critical_probability"), name("severity.critical_probability"), 0.0,
                                    1.0, base.critical_probability),
        escalate_kinds=tuple(kinds),
    )
    if rules.open_k > rules.open_n:
        raise IncidentConfigError(name("open_k"), f"must be <= open_n ({rules.open_n}), got {rules.open_k}")
    if rules.open_k > 64:
        raise IncidentConfigError(name("open_k"), f"must be <= 64, got {rules.open_k}")
    if rules.warning_probability > rules.critical_probability:
        raise IncidentConfigError(name("severity.warning_probability"), "must be <= critical_probability")
    return rules


def _glob(raw: Any, name: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise IncidentConfigError(name, f"must be a non-empty application pattern (glob), got {raw!r}")
    return raw


def _instant(raw: Any, name: str) -> int:
    if isinstance(raw, datetime):
        moment = raw
    elif isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise IncidentConfigError(name, f"must be an ISO-8601 time with a timezone, got {raw!r}") from None
    else:
        raise IncidentConfigError(name, f"must be an ISO-8601 time with a timezone, got {raw!r}")
    if moment.tzinfo is None:
        raise IncidentConfigError(name, f"needs a timezone (Z or an offset), got {raw!r}")
    return int(moment.astimezone(timezone.utc).timestamp() * 1000)


def _minute(raw: Any, name: str) -> int:
    if not isinstance(raw, str) or not _TIME.match(raw):
        raise IncidentConfigError(name, f"must be a time HH:MM (00:00 to 24:00), got {raw!r}")
    hours, minutes = raw.split(":")
    return int(hours) * 60 + int(minutes)


def _maintenance(raw: Any, name: str) -> Maintenance:
    keys = ("name", "applications", "freeze_model", "from", "to", "weekdays", "start", "end", "timezone")
    section = _mapping(raw, name, keys)
    label = section.get("name", name)
    if not isinstance(label, str) or not label:
        raise IncidentConfigError(f"{name}.name", f"must be a non-empty string, got {label!r}")
    freeze = section.get("freeze_model", False)
    if not isinstance(freeze, bool):
        raise IncidentConfigError(f"{name}.freeze_model", f"must be true or false, got {freeze!r}")
    pattern = _glob(section.get("applications", "*"), f"{name}.applications")
    one_off = "from" in section or "to" in section
    recurring = any(k in section for k in ("weekdays", "start", "end", "timezone"))
    if one_off == recurring:
        raise IncidentConfigError(name, "give either from/to (one-off) or weekdays/start/end/timezone (recurring)")
    if one_off:
        start, end = _instant(section.get("from"), f"{name}.from"), _instant(section.get("to"), f"{name}.to")
        if end <= start:
            raise IncidentConfigError(f"{name}.to", "must be after from")
        return Maintenance(label, pattern, freeze, from_ms=start, to_ms=end)
    days = section.get("weekdays", list(WEEKDAYS))
    if not isinstance(days, list) or not days or any(str(d).lower()[:3] not in WEEKDAYS for d in days):
        raise IncidentConfigError(f"{name}.weekdays", f"must be a list of {', '.join(WEEKDAYS)}, got {days!r}")
    zone = section.get("timezone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise IncidentConfigError(f"{name}.timezone", f"unknown IANA time zone {zone!r}") from None
    start_minute = _minute(section.get("start"), f"{name}.start")
    end_minute = _minute(section.get("end"), f"{name}.end")
    if start_minute == end_minute:
        raise IncidentConfigError(f"{name}.end", "must differ from start")
    weekdays = tuple(sorted({WEEKDAYS.index(str(d).lower()[:3]) for d in days}))
    return Maintenance(label, pattern, freeze, weekdays=weekdays, start_minute=start_minute,
                       end_minute=end_minute, timezone=zone)


def parse_settings(raw: Any, default_enabled: bool = True, prefix: str = "") -> IncidentSettings:
    """The ``incidents`` section (a mapping or None) -> :class:`IncidentSettings`; fields named with ``prefix``.

    >>> s = parse_settings({"open_k": 2, "open_n": 3, "overrides": [{"applications": "db-*", "open_k": 1}]})
    >>> s.rules_for("web").open_k, s.rules_for("db-1").open_k, s.history_width
    (2, 1, 1)
    >>> parse_settings({"open_k": 4, "open_n": 3}, prefix="incidents.")
    Traceback (most recent call last):
    ...
    incidents.rules.IncidentConfigError: incidents.open_k: must be <= open_n (3), got 4
    """
    section = _mapping(raw, prefix.rstrip("."), SECTION_KEYS)
    enabled = section.get("enabled", default_enabled)
    if not isinstance(enabled, bool):
        raise IncidentConfigError(f"{prefix}enabled", f"must be true or false, got {enabled!r}")
    base = _rules(section, Rules(), prefix)
    overrides_raw = section.get("overrides") or []
    if not isinstance(overrides_raw, list):
        raise IncidentConfigError(f"{prefix}overrides", "must be a list")
    overrides = []
    for i, item in enumerate(overrides_raw):
        name = f"{prefix}overrides[{i}]"
        entry = _mapping(item, name, ("applications", *_RULE_KEYS))
        overrides.append((_glob(entry.get("applications"), f"{name}.applications"), _rules(entry, base, f"{name}.")))
    windows_raw = section.get("maintenance") or []
    if not isinstance(windows_raw, list):
        raise IncidentConfigError(f"{prefix}maintenance", "must be a list")
    maintenance = tuple(_maintenance(item, f"{prefix}maintenance[{i}]") for i, item in enumerate(windows_raw))
    retention = _int(section.get("retention_millis"), f"{prefix}retention_millis", 0, 7 * 86_400_000)
    return IncidentSettings(enabled, base, tuple(overrides), maintenance, retention or 0)


def with_rules(settings: IncidentSettings, **changes: Any) -> IncidentSettings:
    """The same settings with the default rules changed (tests, benches)."""
    return replace(settings, rules=replace(settings.rules, **changes))
