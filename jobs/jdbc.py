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

An existing table is checked before anything is created in it: missing columns,
no unique key on the key columns or (PostgreSQL) a column type that cannot hold
the values raise :class:`JdbcSchemaError` naming the table.

The password comes only from ``password_env`` or ``password_file`` (see
jobs/config.py). Every database error leaves this module as :class:`JdbcError`
with the password masked out of its message and no chained driver exception,
since Spark and the driver format their own messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import ConfigError, JdbcConfig
from jobs.faults import fault_point
from jobs.result_format import (
    ADDED_COLUMNS,
    SPARK_ISO_MS_PATTERN,
    TABLE_COLUMNS,
    TABLE_KEY,
    postgresql_accepted,
    sql_type,
)
from jobs.sanitize import mask_secret

log = logging.getLogger("anomaly.jdbc")
_DRIVERS = {"sqlite": "org.sqlite.JDBC", "postgresql": "org.postgresql.Driver"}
# the columns, then the key columns, of each unique index of a PostgreSQL table
_PG_COLUMNS_SQL = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
    "WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 AND NOT a.attisdropped"
)
_PG_UNIQUE_SQL = (
    "SELECT string_agg(a.attname, ',') FROM pg_index i JOIN pg_attribute a "
    "ON a.attrelid = i.indrelid AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1]) "
    "WHERE i.indrelid = to_regclass(?) AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL "
    "GROUP BY i.indexrelid"
)


class JdbcError(RuntimeError):
    """A database operation failed; the message names the table and URL, never the password."""


class JdbcSchemaError(JdbcError):
    """The existing table cannot hold this job's rows."""


def describe_error(err: BaseException) -> str:
    """One line per exception in a Java cause chain (the first line of each), else str(err)'s first line."""
    java = getattr(err, "java_exception", None) or getattr(err, "_origin", None)
    parts: list[str] = []
    try:
        while java is not None and len(parts) < 6:
            text = str(java.toString()).strip()
            parts.append(text.splitlines()[0] if text else "")
            java = java.getCause()
    except Exception:  # a dead gateway: fall back to the Python text
        parts = []
    parts = [p for p in dict.fromkeys(parts) if p]
    if not parts:
        text = str(err).strip()
        parts = [text.splitlines()[0] if text else type(err).__name__]
    return " <- caused by ".join(parts)[:4000]


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
        """Connection properties; the password comes from password_env/password_file, and is never logged."""
        props = dict(self.config.properties)
        if self.dialect == "sqlite":
            # a second writer (another stream, a reader) waits instead of failing
            props.setdefault("busy_timeout", "60000")
            props.setdefault("journal_mode", "WAL")
        if self.config.user:
            props["user"] = self.config.user
        password = self.config.resolve_password()
        if password is not None:
            props["password"] = password
        props["driver"] = _DRIVERS[self.dialect]
        return props

    def mask(self, text: str) -> str:
        """``text`` with the password (plain and URL-encoded) replaced by ***."""
        try:
            password = self.config.resolve_password()
        except ConfigError:
            return text
        return mask_secret(text, password)

    def _error(self, action: str, err: BaseException) -> JdbcError:
        where = self.config.url.split("?", 1)[0]
        return JdbcError(self.mask(f"table {self.table} ({where}): {action} failed: {describe_error(err)}"))

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn any database error inside into a JdbcError with a masked message and no chained cause."""
        try:
            yield
        except (JdbcError, ConfigError):
            raise
        except Exception as err:
            # "from None": tracebacks and log records never print the driver's exception
            raise self._error(action, err) from None

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
        with self._guard("connecting"):
            conn = jvm.java.sql.DriverManager.getConnection(self.config.url, jprops)
        try:
            conn.setAutoCommit(False)
            yield conn
        finally:
            conn.close()

    # -- schema -----------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Check an existing table, or create it with its key; then the index and the staging table."""
        types = {c: sql_type(self.dialect, c) for c in TABLE_COLUMNS}
        columns = ", ".join(f"{c} {types[c]}" for c in TABLE_COLUMNS)
        staging_columns = ", ".join(f"{c} {types[c].replace(' NOT NULL', '')}" for c in TABLE_COLUMNS)
        with self._guard("creating or checking the table"), self.connect() as conn:
            stmt = conn.createStatement()
            existing = self._column_types(conn, self.table)
            if existing:
                self._check_existing(conn, existing)
                self._add_new_columns(conn, existing)
            else:
                stmt.executeUpdate(
                    f"CREATE TABLE IF NOT EXISTS {self.table} ({columns}, PRIMARY KEY ({', '.join(TABLE_KEY)}))"
                )
            self._ensure_read_index(conn, existing=bool(existing))
            staging = self._column_types(conn, self.staging)
            if staging and set(staging) != set(TABLE_COLUMNS):
                # ours, and emptied after every batch: an older shape is simply replaced
                stmt.executeUpdate(f"DROP TABLE {self.staging}")
            stmt.executeUpdate(f"CREATE TABLE IF NOT EXISTS {self.staging} ({staging_columns})")
            conn.commit()

    def _ensure_read_index(self, conn: Any, existing: bool) -> None:
        """The (application, ts) index that reads use; optional on a table someone else owns."""
        create = f"CREATE INDEX IF NOT EXISTS {self.table}_app_ts ON {self.table} (application, ts)"
        if self.dialect != "postgresql" or not existing:
            conn.createStatement().executeUpdate(create)
            return
        savepoint = conn.setSavepoint()
        try:
            conn.createStatement().executeUpdate(create)
        except Exception as err:  # typically: the job's user does not own the table
            conn.rollback(savepoint)
            log.warning(
                "table %s: no index on (application, ts) could be created (%s); reads by application and "
                "time will scan the table",
                self.table,
                self.mask(describe_error(err)),
            )

    def _add_new_columns(self, conn: Any, existing: dict[str, str]) -> None:
        """Give a table made by an earlier version the columns added since (nullable, so old rows stay valid)."""
        for column in ADDED_COLUMNS:
            if column in existing:
                continue
            ddl = f"ALTER TABLE {self.table} ADD COLUMN {column} {sql_type(self.dialect, column)}"
            savepoint = conn.setSavepoint() if self.dialect == "postgresql" else None
            try:
                conn.createStatement().executeUpdate(ddl)
            except Exception as err:  # typically: the job's user does not own the table
                if savepoint is not None:
                    conn.rollback(savepoint)
                raise JdbcSchemaError(
                    f"table {self.table} lacks column {column} (new in this version) and it could not be added "
                    f"({self.mask(describe_error(err))}); run `{ddl}` as the table's owner, or set "
                    "sinks.jdbc.table to a new name"
                ) from None
            log.info("table %s: added column %s (new in this version)", self.table, column)

    def _check_existing(self, conn: Any, existing: dict[str, str]) -> None:
        missing = [c for c in TABLE_COLUMNS if c not in existing and c not in ADDED_COLUMNS]
        if missing:
            raise JdbcSchemaError(
                f"table {self.table} exists but lacks columns {missing}; "
                f"drop or rename it, or set sinks.jdbc.table to a new name"
            )
        if self.dialect == "postgresql":
            wrong = [
                f"{c} is {existing[c]} (needs { ' or '.join(postgresql_accepted(c))})"
                for c in TABLE_COLUMNS
                if c in existing
                and (not existing[c].startswith(postgresql_accepted(c)) or existing[c].endswith("]"))  # no arrays
            ]
            if wrong:
                raise JdbcSchemaError(
                    f"table {self.table} exists with incompatible column types: {'; '.join(wrong)}; "
                    "migrate it, or set sinks.jdbc.table to a new name"
                )
        if not self._has_unique_key(conn):
            raise JdbcSchemaError(
                f"table {self.table} exists without a unique key on {TABLE_KEY}; "
                "upserts need it: add it, or set sinks.jdbc.table to a new name"
            )

    def _column_types(self, conn: Any, table: str) -> dict[str, str]:
        """{column: type} of ``table`` (lower case), empty when it does not exist.

        PostgreSQL resolves the name as a query would (search_path, case folding);
        SQLite asks the driver's metadata.
        """
        if self.dialect != "postgresql":
            return dict.fromkeys(self._columns(conn, table), "")
        found: dict[str, str] = {}
        query = conn.prepareStatement(_PG_COLUMNS_SQL)
        try:
            query.setString(1, table)
            rs = query.executeQuery()
            while rs.next():
                found[rs.getString(1).lower()] = rs.getString(2).lower()
            rs.close()
        finally:
            query.close()
        return found

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
        if self.dialect == "postgresql":
            query = conn.prepareStatement(_PG_UNIQUE_SQL)
            try:
                query.setString(1, self.table)
                rs = query.executeQuery()
                keys = []
                while rs.next():
                    keys.append({c.lower() for c in rs.getString(1).split(",")})
                rs.close()
            finally:
                query.close()
            return set(TABLE_KEY) in keys
        meta = conn.getMetaData()
        for name in (self.table, self.table.lower()):
            rs = meta.getIndexInfo(None, None, name, True, False)
            indexes: dict[str, set[str]] = {}
            while rs.next():
                column = rs.getString("COLUMN_NAME")
                if column:
                    indexes.setdefault(rs.getString("INDEX_NAME") or "", set()).add(column.lower())
            rs.close()
            if any(cols == set(TABLE_KEY) for cols in indexes.values()):
                return True
            pk = meta.getPrimaryKeys(None, None, name)
            pk_cols = set()
            while pk.next():
                pk_cols.add(pk.getString("COLUMN_NAME").lower())
            pk.close()
            if pk_cols == set(TABLE_KEY):
                return True
        return False

    # -- writes -----------------------------------------------------------------
    def staging_frame(self, results: DataFrame) -> DataFrame:
        """Result rows shaped for the table of this dialect."""
        if self.dialect == "sqlite":
            ts = F.date_format(F.timestamp_millis("ts_ms"), SPARK_ISO_MS_PATTERN)
            flag = F.col("is_anomaly").cast("int")
        else:
            ts = F.timestamp_millis("ts_ms")
            flag = F.col("is_anomaly")
        shaped = {"ts": ts.alias("ts"), "is_anomaly": flag.alias("is_anomaly")}
        if "explanation" not in results.columns:  # rows shaped before explanations existed
            shaped["explanation"] = F.lit(None).cast("string").alias("explanation")
        return results.select(*[shaped.get(column, column) for column in TABLE_COLUMNS])

    def upsert(self, results: DataFrame, sleep: Callable[[float], None] = time.sleep) -> None:
        """Write one micro-batch of results idempotently (see the module docstring).

        A database that is briefly unavailable (restarting, locked, network
        blip) costs a retry, not the batch: the whole write is repeated, which
        is safe because it is idempotent. After ``write_retries`` failures the
        error propagates, the query stops, and a restart replays the batch
        from the checkpoint -- rows are never skipped.
        """
        attempts = self.config.write_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                self.clear_staging()
                self.write_staging(self.staging_frame(results))
                self.merge_staging()
                return
            except JdbcError as err:
                if attempt == attempts:
                    raise
                delay = min(30.0, 2.0 ** (attempt - 1))
                log.warning(
                    "table %s: write failed (attempt %d of %d), retrying in %.0f s: %s",
                    self.table,
                    attempt,
                    attempts,
                    delay,
                    err,
                )
                sleep(delay)

    def clear_staging(self) -> None:
        with self._guard("emptying the staging table"), self.connect() as conn:
            conn.createStatement().executeUpdate(f"DELETE FROM {self.staging}")
            conn.commit()

    def write_staging(self, frame: DataFrame) -> None:
        """Append ``frame`` (shaped by staging_frame) to the staging table, from the executors."""
        with self._guard("writing the batch into the staging table"):
            props = self.properties()
            writer = frame.write.format("jdbc").option("url", self.config.url)
            writer = writer.option("dbtable", self.staging).option("batchsize", "5000")
            if self.dialect == "sqlite":
                # SQLite has one writer at a time: parallel tasks would only queue on the lock
                writer = writer.option("numPartitions", "1")
                # Spark's writer asks for READ_UNCOMMITTED by default, which the SQLite driver
                # refuses with a warning per task; SERIALIZABLE is the level SQLite has (and
                # keeps the task's rows in one transaction: NONE would commit row by row)
                writer = writer.option("isolationLevel", "SERIALIZABLE")
            for key, value in props.items():
                writer = writer.option(key, value)
            writer.mode("append").save()

    def merge_sql(self) -> str:
        columns = ", ".join(TABLE_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in TABLE_COLUMNS if c not in TABLE_KEY)
        keys = ", ".join(TABLE_KEY)
        if self.dialect == "postgresql":
            # a retried Spark task can leave a row twice in staging, and PostgreSQL refuses
            # to update one row twice in a statement; the copies are identical
            select = f"SELECT DISTINCT ON ({keys}) {columns} FROM {self.staging}"
        else:
            select = f"SELECT {columns} FROM {self.staging}"
        # "WHERE true" disambiguates ON CONFLICT after INSERT ... SELECT in SQLite's grammar
        return f"INSERT INTO {self.table} ({columns}) {select} WHERE true ON CONFLICT ({keys}) DO UPDATE SET {updates}"

    def merge_staging(self) -> None:
        """Copy staging into the table and empty staging, in one transaction."""
        with self._guard("merging the staging table"), self.connect() as conn:
            stmt = conn.createStatement()
            stmt.executeUpdate(self.merge_sql())
            stmt.executeUpdate(f"DELETE FROM {self.staging}")
            fault_point("during_jdbc_merge", -1)  # test hook; no batch id here: leave ANOMALY_FAULT_BATCH unset
            conn.commit()
