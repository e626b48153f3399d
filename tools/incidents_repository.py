"""Read API over the job's incident tables (``incidents``, ``incident_events``), without Spark.

The tables live beside the results table (same JDBC URL): ``incidents`` has one row per incident
(primary key ``incident_id``, upserted to its latest transition, ``last_seq``), ``incident_events``
one row per transition (primary key ``(incident_id, seq)``). Times are ISO-8601 text in SQLite and
``timestamptz`` in PostgreSQL; this client returns them as epoch milliseconds. Read-only, every
value a bound parameter, connections as :class:`tools.repository.ResultsRepository` makes them.
A database where the job has not created the tables yet reads as "no incidents", not as an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tools.repository import ResultsRepository

INCIDENTS_TABLE = "incidents"
EVENTS_TABLE = "incident_events"
STATES = ("open", "flapping", "no_data", "resolved")
SEVERITIES = ("info", "warning", "critical")
LABELS = ("true_positive", "false_positive", "expected", "new_normal")
_COMMON = (
    "state", "application", "detector", "agg_function", "agg_window_millis", "opened_at", "event_ts",
    "resolved_at", "severity", "peak_probability", "peak_value", "peak_ts", "value_lower_limit",
    "value_upper_limit", "explanation", "window_count", "resolution", "feedback",
)
INCIDENT_FIELDS = ("incident_id", *_COMMON, "last_seq")
EVENT_FIELDS = ("incident_id", "seq", "transition", *_COMMON)
_TIMES = ("opened_at", "event_ts", "resolved_at", "peak_ts")


class IncidentsRepository(ResultsRepository):
    """Reads of the two incident tables (see the module docstring); a connection per call."""

    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(url, INCIDENTS_TABLE, user, password, properties)

    def available(self) -> bool:
        """Whether the job has created the incident tables in this database."""
        if self.dialect == "sqlite":
            sql = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ({p}, {p})"
        else:
            sql = "SELECT COUNT(*) FROM information_schema.tables WHERE table_name IN ({p}, {p})"
        return int(self._query(sql, (INCIDENTS_TABLE, EVENTS_TABLE))[0][0]) == 2

    def _row(self, fields: tuple[str, ...], values: tuple[Any, ...]) -> dict[str, Any]:
        out = dict(zip(fields, values, strict=True))
        for name in _TIMES:
            if out.get(name) is not None:
                out[name] = _ms(self._ts(out[name]))
        for name in ("agg_window_millis", "window_count", "last_seq", "seq"):
            if out.get(name) is not None:
                out[name] = int(out[name])
        return out

    def incidents(
        self,
        state: str | None = None,
        application: str | None = None,
        severity: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Open ones first (open, flapping, no_data), then resolved; newest opening first within each."""
        where, params = [], []
        for column, value, allowed in (("state", state, STATES), ("severity", severity, SEVERITIES)):
            if value:
                if value not in allowed:
                    raise ValueError(f"{column} must be one of {', '.join(allowed)}, got {value!r}")
                where.append(f"{column} = {{p}}")
                params.append(value)
        if application:
            where.append("application = {p}")
            params.append(application)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = (
            f"SELECT {', '.join(INCIDENT_FIELDS)} FROM {INCIDENTS_TABLE} {clause} "
            "ORDER BY CASE WHEN state = 'resolved' THEN 1 ELSE 0 END, opened_at DESC, incident_id LIMIT {p}"
        )
        rows = self._query(sql, (*params, max(1, int(limit))))
        return [self._row(INCIDENT_FIELDS, r) for r in rows]

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        sql = f"SELECT {', '.join(INCIDENT_FIELDS)} FROM {INCIDENTS_TABLE} WHERE incident_id = {{p}}"
        rows = self._query(sql, (incident_id,))
        return self._row(INCIDENT_FIELDS, rows[0]) if rows else None

    def events(self, incident_id: str) -> list[dict[str, Any]]:
        """The incident's transitions in order (seq 1, 2, ...)."""
        sql = f"SELECT {', '.join(EVENT_FIELDS)} FROM {EVENTS_TABLE} WHERE incident_id = {{p}} ORDER BY seq"
        return [self._row(EVENT_FIELDS, r) for r in self._query(sql, (incident_id,))]

    def applications(self) -> list[str]:
        return [r[0] for r in self._query(f"SELECT DISTINCT application FROM {INCIDENTS_TABLE} ORDER BY 1", ())]

    def precision(self) -> list[dict[str, Any]]:
        """Per application, the incidents an operator labelled and what share was right.

        ``precision`` = labelled incidents not marked ``false_positive`` / labelled incidents:
        ``true_positive``, ``expected`` (a real but planned change) and ``new_normal`` (a real,
        lasting change) all mean the incident saw something that happened. None when nothing is labelled.
        """
        sql = (
            f"SELECT application, feedback, COUNT(*) FROM {INCIDENTS_TABLE} "
            "GROUP BY application, feedback ORDER BY application"
        )
        out: dict[str, dict[str, Any]] = {}
        for app, label, n in self._query(sql, ()):
            entry = out.setdefault(app, {"application": app, "incidents": 0, **{k: 0 for k in LABELS}})
            entry["incidents"] += int(n)
            if label in LABELS:
                entry[label] += int(n)
        for entry in out.values():
            labelled = sum(entry[k] for k in LABELS)
            entry["labelled"] = labelled
            entry["precision"] = (labelled - entry["false_positive"]) / labelled if labelled else None
        return list(out.values())


def _ms(ts: datetime) -> int:
    return round(ts.timestamp() * 1000)
