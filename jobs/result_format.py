"""The result format, declared once: every stage that reads or writes results uses these names.

One result per point and detector leaves the stateful operator as a row of
:data:`OPERATOR_COLUMNS` (``kind`` = ``result``; dead letters share the frame
with ``kind`` = ``dead_letter``), and becomes

* a Kafka message (jobs/sinks.py): :data:`MESSAGE_FIELDS` at the top level, the
  detector's verdict nested under ``anomaly_results`` (:data:`ANOMALY_RESULT_FIELDS`),
  keyed by :data:`TABLE_KEY`;
* a row of the JDBC table (jobs/jdbc.py writes it, tools/repository.py reads it):
  :data:`TABLE_COLUMNS`, unique on :data:`TABLE_KEY`, typed per dialect by
  :func:`sql_type`.

Timestamps are ISO-8601 UTC with milliseconds in every text form (:func:`iso_ms`,
:data:`SPARK_ISO_MS_PATTERN`). Pure Python: the tools import this without pyspark.

>>> iso_ms(1_700_000_000_123)
'2023-11-14T22:13:20.123Z'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

KIND_RESULT = "result"
KIND_DEAD_LETTER = "dead_letter"
# an incident transition (incidents/): the record's JSON in `detail`, to the incidents topic and tables
KIND_INCIDENT = "incident"
# Every reason a dead letter can carry: the source stage's validation codes (jobs/source.py),
# then the operator's (jobs/stateful_step.py). The sink counts each one per batch for the
# progress line; a code missing here would be counted as "other" (tests/test_sinks.py checks both
# modules against this list).
DEAD_LETTER_REASONS = (
    "null_value",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "null_field",
    "wrong_type",
    "empty_application",
    "invalid_application",
    "value_not_finite",
    "ts_unparseable",
    "ts_no_timezone",
    "ts_out_of_range",
    "unknown",
    "late",
    "duplicate",
    "conflicting_value",
    "detector_error",
    "invalid_feedback",
    "unknown_incident",
)


@dataclass(frozen=True)
class Column:
    """One result column: its Spark type in the operator's output, its SQL types, whether it may be null."""

    name: str
    spark: str  # Spark SQL type name (jobs/stateful_operator.py maps it to a DataType)
    sqlite: str
    postgresql: str
    # PostgreSQL types (as format_type() spells them) an existing table may use for this column
    postgresql_accepted: tuple[str, ...]
    nullable: bool = False


_TEXT = ("text", "character varying")
_FLOAT = ("double precision", "numeric")
# The table's columns, in the table's (and the message's) order.
RESULT_COLUMNS_SPEC = (
    Column("application", "string", "TEXT", "TEXT", _TEXT),
    Column("ts", "timestamp", "TEXT", "TIMESTAMPTZ", ("timestamp with time zone",)),
    Column("agg_function", "string", "TEXT", "TEXT", _TEXT),
    Column("agg_window_millis", "bigint", "INTEGER", "BIGINT", ("bigint", "numeric")),
    Column("agg_value", "double", "REAL", "DOUBLE PRECISION", _FLOAT, nullable=True),
    Column("detector", "string", "TEXT", "TEXT", _TEXT),
    Column("value_lower_limit", "double", "REAL", "DOUBLE PRECISION", _FLOAT, nullable=True),
    Column("value_upper_limit", "double", "REAL", "DOUBLE PRECISION", _FLOAT, nullable=True),
    Column("anomaly_probability", "double", "REAL", "DOUBLE PRECISION", _FLOAT),
    Column("is_anomaly", "boolean", "INTEGER", "BOOLEAN", ("boolean",)),
    # a JSON object as text (detectors/explain.py); null when the point is not an anomaly
    Column("explanation", "string", "TEXT", "TEXT", _TEXT, nullable=True),
)
TABLE_COLUMNS = tuple(c.name for c in RESULT_COLUMNS_SPEC)
# one row per point and detector: the table's unique key and the Kafka message's key
TABLE_KEY = ("application", "detector", "agg_function", "agg_window_millis", "ts")
# columns added after the first release: an existing table without them gets them
# (ALTER TABLE ... ADD COLUMN, nullable); a table missing any other column is refused
ADDED_COLUMNS = ("explanation",)
# the detector's verdict, nested under "anomaly_results" in the message and the repository's rows
ANOMALY_RESULT_FIELDS = ("value_lower_limit", "value_upper_limit", "anomaly_probability", "is_anomaly", "explanation")
MESSAGE_FIELDS = tuple(c for c in TABLE_COLUMNS if c not in ANOMALY_RESULT_FIELDS)

# The operator's output: the result columns with the event time as epoch ms, then the
# columns only dead letters fill (null in results).
_DEAD_LETTER_SPEC = (
    ("reason", "string"),
    ("detail", "string"),
    ("raw", "binary"),
    ("kafka_key", "binary"),
    ("src_topic", "string"),
    ("src_partition", "int"),
    ("src_offset", "bigint"),
)
OPERATOR_RESULT_COLUMNS = ("kind", *("ts_ms" if c == "ts" else c for c in TABLE_COLUMNS))
DEAD_LETTER_COLUMNS = tuple(name for name, _ in _DEAD_LETTER_SPEC)
OPERATOR_COLUMNS = OPERATOR_RESULT_COLUMNS + DEAD_LETTER_COLUMNS
# Spark type name of each operator column; every column but "kind" is nullable (dead letters
# leave the result columns null and results the dead-letter ones)
OPERATOR_TYPES = {
    "kind": "string",
    "ts_ms": "bigint",
    **{c.name: c.spark for c in RESULT_COLUMNS_SPEC if c.name != "ts"},
    **dict(_DEAD_LETTER_SPEC),
}


def sql_type(dialect: str, column: str) -> str:
    """The column's type in a new table of ``dialect`` (``sqlite`` or ``postgresql``), NOT NULL unless nullable."""
    spec = _BY_NAME[column]
    base = spec.sqlite if dialect == "sqlite" else spec.postgresql
    return base if spec.nullable else f"{base} NOT NULL"


def postgresql_accepted(column: str) -> tuple[str, ...]:
    return _BY_NAME[column].postgresql_accepted


_BY_NAME = {c.name: c for c in RESULT_COLUMNS_SPEC}

# -- text forms ----------------------------------------------------------------------
# the same text as iso_ms, computed by Spark (date_format of timestamp_millis, session zone UTC)
SPARK_ISO_MS_PATTERN = "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'"


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as the table's and the messages' text: ``2024-01-01T00:00:00.000Z``."""
    return iso_ms_of(datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc))


def iso_ms_of(ts: datetime) -> str:
    """An aware datetime (naive = UTC) in the same text form, truncated to the millisecond."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    ts = ts.astimezone(timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
