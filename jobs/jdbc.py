"""JDBC result table: idempotent upserts from Spark, reads for users.

Writing a micro-batch (``JdbcTable.upsert``):

1. Spark's own JDBC writer appends the batch into a per-stream staging table,
   from the executors -- the batch is never collected onto the driver;
2. one transaction on the driver copies staging into the result table with
   ``INSERT ... ON CONFLICT (application, detector, agg_function,
   agg_window_millis, ts) DO UPDATE`` and empties staging.

A micro-batch replayed after a crash rewrites the same keys with the same
values, so the table ends up exactly as after an uninterrupted run. SQL text is
built only from validated identifiers (the table name from the config); every
value travels as a bound parameter or through Spark's prepared statements.

SQLite (``jdbc:sqlite:path``, the default) stores ``ts`` as ISO-8601 UTC text
with milliseconds, which sorts in time order; PostgreSQL uses ``timestamptz``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import JdbcConfig

KEY_COLUMNS = ("application", "detector", "agg_function", "agg_window_millis", "ts")
COLUMNS = (
    "application",
    "ts",
    "agg_function",
    "agg_window_millis",
    "agg_value",
    "detector",
    "value_lower_limit",
    "value_upper_limit",
    "anomaly_probability",
    "is_anomaly",
)
_TYPES = {
    "sqlite": {
        "application": "TEXT NOT NULL",
        "ts": "TEXT NOT NULL",
        "agg_function": "TEXT NOT NULL",
        "agg_window_millis": "INTEGER NOT NULL",
        "agg_value": "REAL",
        "detector": "TEXT NOT NULL",
        "value_lower_limit": "REAL",
        "value_upper_limit": "REAL",
        "anomaly_probability": "REAL NOT NULL",
        "is_anomaly": "INTEGER NOT NULL",
    },
    "postgresql": {
        "application": "TEXT NOT NULL",
        "ts": "TIMESTAMPTZ NOT NULL",
        "agg_function": "TEXT NOT NULL",
        "agg_window_millis": "BIGINT NOT NULL",
        "agg_value": "DOUBLE PRECISION",
        "detector": "TEXT NOT NULL",
        "value_lower_limit": "DOUBLE PRECISION",
        "value_upper_limit": "DOUBLE PRECISION",
        "anomaly_probability": "DOUBLE PRECISION NOT NULL",
        "is_anomaly": "BOOLEAN NOT NULL",
    },
}
_DRIVERS = {"sqlite": "org.sqlite.JDBC", "postgresql": "org.postgresql.Driver"}


class JdbcSchemaError(RuntimeError):
    """The existing table cannot hold this job's rows."""


@dataclass
class JdbcTable:
    spark: SparkSession
    config: JdbcConfig
    stream_name: str

    def __post_init__(self) -> None:
        self.dialect = "sqlite" if self.config.url.startswith("jdbc:sqlite:") else "postgresql"
        self.table = self.config.table
        safe_stream = "".join(c if c.isalnum() else "_" for c in self.stream_name)
        self.staging = f"{self.table}_staging_{safe_stream}"[:63]

    # -- connection -------------------------------------------------------------
    def properties(self) -> dict[str, str]:
        """Connection properties; the password is read from the environment, never logged."""
        props = dict(self.config.properties)
        if self.dialect == "sqlite":
            # a second writer (another stream, a reader) waits instead of failing
            props.setdefault("busy_timeout", "60000")
            props.setdefault("journal_mode", "WAL")
        if self.config.user:
            props["user"] = self.config.user
        if self.config.password_env:
            password = os.environ.get(self.config.password_env)
            if password is None:
                raise RuntimeError(
                    f"sinks.jdbc.password_env: environment variable {self.config.password_env} is not set"
                )
            props["password"] = password
        props["driver"] = _DRIVERS[self.dialect]
        return props

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A java.sql.Connection through the JVM, autocommit off."""
        jvm = self.spark.sparkContext._jvm
        assert jvm is not None
        props = self.properties()
        # Spark loads drivers through its own class loader; registering them here
        # makes java.sql.DriverManager see jars passed with --jars/--packages.
        jvm.org.apache.spark.sql.execution.datasources.jdbc.DriverRegistry.register(props["driver"])
        jprops = jvm.java.util.Properties()
        for key, value in props.items():
            if key != "driver":
                jprops.setProperty(key, value)
        conn = jvm.java.sql.DriverManager.getConnection(self.config.url, jprops)
        try:
            conn.setAutoCommit(False)
            yield conn
        finally:
            conn.close()

    # -- schema -----------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create the table, its key and the staging table if missing; check an existing table."""
        types = _TYPES[self.dialect]
        columns = ", ".join(f"{c} {types[c]}" for c in COLUMNS)
        staging_columns = ", ".join(f"{c} {types[c].replace(' NOT NULL', '')}" for c in COLUMNS)
        with self.connect() as conn:
            stmt = conn.createStatement()
            stmt.executeUpdate(
                f"CREATE TABLE IF NOT EXISTS {self.table} ({columns}, PRIMARY KEY ({', '.join(KEY_COLUMNS)}))"
            )
            stmt.executeUpdate(f"CREATE INDEX IF NOT EXISTS {self.table}_app_ts ON {self.table} (application, ts)")
            stmt.executeUpdate(f"CREATE TABLE IF NOT EXISTS {self.staging} ({staging_columns})")
            conn.commit()
            existing = self._columns(conn, self.table)
            missing = [c for c in COLUMNS if c not in existing]
            if missing:
                raise JdbcSchemaError(
                    f"table {self.table} exists but lacks columns {missing}; "
                    f"drop or rename it, or set sinks.jdbc.table to a new name"
                )
            if not self._has_unique_key(conn):
                raise JdbcSchemaError(
                    f"table {self.table} exists without a unique key on {KEY_COLUMNS}; "
                    "upserts need it: add it, or set sinks.jdbc.table to a new name"
                )

    def _columns(self, conn: Any, table: str) -> set[str]:
        meta = conn.getMetaData()
        found: set[str] = set()
        for name in (table, table.lower(), table.upper()):
            rs = meta.getColumns(None, None, name, None)
            while rs.next():
                found.add(rs.getString("COLUMN_NAME").lower())
            rs.close()
            if found:
                break
        return found

    def _has_unique_key(self, conn: Any) -> bool:
        meta = conn.getMetaData()
        for name in (self.table, self.table.lower()):
            rs = meta.getIndexInfo(None, None, name, True, False)
            indexes: dict[str, set[str]] = {}
            while rs.next():
                column = rs.getString("COLUMN_NAME")
                if column:
                    indexes.setdefault(rs.getString("INDEX_NAME") or "", set()).add(column.lower())
            rs.close()
            if any(cols == set(KEY_COLUMNS) for cols in indexes.values()):
                return True
            pk = meta.getPrimaryKeys(None, None, name)
            pk_cols = set()
            while pk.next():
                pk_cols.add(pk.getString("COLUMN_NAME").lower())
            pk.close()
            if pk_cols == set(KEY_COLUMNS):
                return True
        return False

    # -- writes -----------------------------------------------------------------
    def staging_frame(self, results: DataFrame) -> DataFrame:
        """Result rows shaped for the table of this dialect."""
        if self.dialect == "sqlite":
            ts = F.date_format(F.timestamp_millis("ts_ms"), "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'")
            flag = F.col("is_anomaly").cast("int")
        else:
            ts = F.timestamp_millis("ts_ms")
            flag = F.col("is_anomaly")
        return results.select(
            "application",
            ts.alias("ts"),
            "agg_function",
            "agg_window_millis",
            "agg_value",
            "detector",
            "value_lower_limit",
            "value_upper_limit",
            "anomaly_probability",
            flag.alias("is_anomaly"),
        )

    def upsert(self, results: DataFrame) -> None:
        """Write one micro-batch of results idempotently (see the module docstring)."""
        with self.connect() as conn:
            conn.createStatement().executeUpdate(f"DELETE FROM {self.staging}")
            conn.commit()
        props = self.properties()
        writer = self.staging_frame(results).write.format("jdbc").option("url", self.config.url)
        writer = writer.option("dbtable", self.staging).option("batchsize", "5000")
        if self.dialect == "sqlite":
            # SQLite has one writer at a time: parallel tasks would only queue on the lock
            writer = writer.option("numPartitions", "1")
        for key, value in props.items():
            writer = writer.option(key, value)
        writer.mode("append").save()
        columns = ", ".join(COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in KEY_COLUMNS)
        # "WHERE true" disambiguates ON CONFLICT after INSERT ... SELECT in SQLite's grammar
        merge = (
            f"INSERT INTO {self.table} ({columns}) SELECT {columns} FROM {self.staging} WHERE true "
            f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {updates}"
        )
        with self.connect() as conn:
            stmt = conn.createStatement()
            stmt.executeUpdate(merge)
            stmt.executeUpdate(f"DELETE FROM {self.staging}")
            conn.commit()
