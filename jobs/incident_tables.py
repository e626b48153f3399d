"""The incident tables beside the results table: ``incidents`` (one row per incident) and ``incident_events``.

Every incident transition (incidents/machine.py, :data:`incidents.RECORD_FIELDS`
but the topic-only ``reopen_until``) is a row of ``incident_events``, primary key ``(incident_id, seq)``, and
upserts the incident's row in ``incidents`` (primary key ``incident_id``: every
field of the record but ``seq`` and ``transition``, plus ``last_seq``; an
upsert only moves the row forward, ``WHERE incidents.last_seq <= excluded.last_seq``).

Transitions are few (one per incident change, not one per window), so a
micro-batch's are collected on the driver and written in one transaction
through the results table's connection (jobs/jdbc.py), after the results. A
batch replayed after a crash writes the same rows with the same keys: the
tables end up as after an uninterrupted run. Times are ISO-8601 text in SQLite,
``timestamptz`` in PostgreSQL, as in the results table.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from incidents import RECORD_FIELDS
from incidents.machine import TOPIC_ONLY_FIELDS
from jobs.jdbc import JdbcError, JdbcTable

log = logging.getLogger("anomaly.jdbc")

EVENTS_TABLE = "incident_events"
INCIDENTS_TABLE = "incidents"
_TIMES = ("opened_at", "event_ts", "resolved_at", "peak_ts")
_INTS = ("seq", "agg_window_millis", "window_count", "last_seq")
_FLOATS = ("peak_probability", "peak_value", "value_lower_limit", "value_upper_limit")
_NULLABLE = ("resolved_at", "value_lower_limit", "value_upper_limit", "explanation", "resolution", "feedback")
# reopen_until is on the topic only (incidents.machine.TOPIC_ONLY_FIELDS): tables created before it stay valid
INCIDENT_EVENT_COLUMNS = tuple(f for f in RECORD_FIELDS if f not in TOPIC_ONLY_FIELDS)
INCIDENT_COLUMNS = (*(f for f in INCIDENT_EVENT_COLUMNS if f not in ("seq", "transition")), "last_seq")


def _type(dialect: str, column: str) -> str:
    if column in _TIMES:
        base = "TEXT" if dialect == "sqlite" else "TIMESTAMPTZ"
    elif column in _INTS:
        base = "INTEGER" if dialect == "sqlite" else "BIGINT"
    elif column in _FLOATS:
        base = "REAL" if dialect == "sqlite" else "DOUBLE PRECISION"
    else:
        base = "TEXT"
    return base if column in _NULLABLE else f"{base} NOT NULL"


class IncidentTables:
    """Creates and writes the two tables on the results table's database."""

    def __init__(self, results: JdbcTable) -> None:
        self.results = results
        self.dialect = results.dialect

    def ensure_schema(self) -> None:
        with self.results._guard("creating the incident tables"), self.results.connect() as conn:
            stmt = conn.createStatement()
            for table, columns, key in (
                (INCIDENTS_TABLE, INCIDENT_COLUMNS, ("incident_id",)),
                (EVENTS_TABLE, INCIDENT_EVENT_COLUMNS, ("incident_id", "seq")),
            ):
                spec = ", ".join(f"{c} {_type(self.dialect, c)}" for c in columns)
                stmt.executeUpdate(f"CREATE TABLE IF NOT EXISTS {table} ({spec}, PRIMARY KEY ({', '.join(key)}))")
            stmt.executeUpdate(
                f"CREATE INDEX IF NOT EXISTS {INCIDENTS_TABLE}_app ON {INCIDENTS_TABLE} (application, opened_at)"
            )
            conn.commit()

    def _insert_sql(self, table: str, columns: tuple[str, ...], key: tuple[str, ...], upsert: bool) -> str:
        cast = "CAST(? AS TIMESTAMPTZ)" if self.dialect == "postgresql" else "?"
        values = ", ".join(cast if c in _TIMES else "?" for c in columns)
        head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) ON CONFLICT ({', '.join(key)})"
        if not upsert:
            return f"{head} DO NOTHING"
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
        return f"{head} DO UPDATE SET {updates} WHERE {table}.last_seq <= excluded.last_seq"

    def write(self, records: Iterable[str], sleep: Callable[[float], None] = time.sleep) -> int:
        """Write a batch's transitions (their JSON texts), in one transaction; returns how many.

        Retried like the results' upsert (``write_retries``, backoff 1, 2, 4 ... s): the transaction is
        all or nothing and the writes are idempotent, so a repeat is safe.
        """
        rows = sorted((json.loads(text) for text in records), key=lambda r: (r["incident_id"], r["seq"]))
        if not rows:
            return 0
        attempts = self.results.config.write_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                self._write(rows)
                break
            except JdbcError as err:
                if attempt == attempts:
                    raise
                delay = min(30.0, 2.0 ** (attempt - 1))
                log.warning("incident tables: write failed (attempt %d of %d), retrying in %.0f s: %s",
                            attempt, attempts, delay, err)
                sleep(delay)
        return len(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        with self.results._guard("writing the incident tables"), self.results.connect() as conn:
            for table, columns, key, upsert in (
                (EVENTS_TABLE, INCIDENT_EVENT_COLUMNS, ("incident_id", "seq"), False),
                (INCIDENTS_TABLE, INCIDENT_COLUMNS, ("incident_id",), True),
            ):
                statement = conn.prepareStatement(self._insert_sql(table, columns, key, upsert))
                try:
                    for row in rows:
                        row = {**row, "last_seq": row["seq"]}
                        for k, column in enumerate(columns, start=1):
                            _bind(statement, k, column, row[column])
                        # one at a time, in seq order: a later transition of an incident overwrites an earlier
                        statement.executeUpdate()
                finally:
                    statement.close()
            conn.commit()


_SQL_NULL_TYPES = {"int": -5, "float": 8, "text": 12}  # java.sql.Types BIGINT, DOUBLE, VARCHAR


def _bind(statement: Any, k: int, column: str, value: Any) -> None:
    if value is None:
        kind = "int" if column in _INTS else "float" if column in _FLOATS else "text"
        statement.setNull(k, _SQL_NULL_TYPES[kind])
    elif column in _INTS:
        statement.setLong(k, int(value))
    elif column in _FLOATS:
        statement.setDouble(k, float(value))
    else:
        statement.setString(k, str(value))
