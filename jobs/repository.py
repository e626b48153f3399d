"""Read API over the job's JDBC result table, without Spark.

The seed framework's repository, for users and tests::

    repo = ResultsRepository.from_config(job.streams[0].sinks.jdbc)
    repo.get_applications()                      # ['db', 'web']
    repo.fetch("web", "2024-01-01T00:00:00Z", datetime(2024, 1, 2, tzinfo=timezone.utc))

``fetch`` returns the rows of one application with ``from_ts <= ts < to_ts``
(inclusive start, exclusive end), ordered by ``ts`` (then detector,
agg_function, agg_window_millis). Bounds are aware datetimes, naive datetimes
(taken as UTC) or ISO-8601 strings (``Z`` or an offset; without one, UTC).
Each row is a :class:`Prediction` shaped like the job's output message, with
the detector's fields nested in ``anomaly_results``; ``ts`` is an aware UTC datetime.

SQLite (``jdbc:sqlite:PATH``) is read with the standard library's sqlite3,
read-only; PostgreSQL (``jdbc:postgresql://host:port/db``) with psycopg 3
(``pip install 'psycopg[binary]'``). Every value is a bound parameter; the table
name is checked to be a plain identifier before it goes into SQL text.
"""

from __future__ import annotations

import math
import re
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from detectors.base import AnomalyResult
from jobs.config import JdbcConfig

__all__ = ["AnomalyResult", "Prediction", "RepositoryError", "ResultsRepository"]

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_FIELDS = (
    "application, ts, agg_function, agg_window_millis, agg_value, detector, "
    "value_lower_limit, value_upper_limit, anomaly_probability, is_anomaly"
)
# JDBC URL / connection properties understood for PostgreSQL -> libpq keywords
_PG_PARAMS = {
    "user": "user",
    "sslmode": "sslmode",
    "sslrootcert": "sslrootcert",
    "sslcert": "sslcert",
    "sslkey": "sslkey",
    "connecttimeout": "connect_timeout",
    "applicationname": "application_name",
}


class RepositoryError(RuntimeError):
    """The table cannot be read; the message never holds the password."""


@dataclass(frozen=True)
class Prediction:
    """One result row, shaped like the job's output message."""

    application: str
    ts: datetime  # aware, UTC
    agg_function: str
    agg_window_millis: int
    agg_value: float | None
    detector: str
    anomaly_results: AnomalyResult

    def to_message(self) -> dict[str, Any]:
        """The JSON-ready dict the job publishes on its output topic for this row."""
        r = self.anomaly_results
        return {
            "application": self.application,
            "ts": _iso_ms(self.ts),
            "agg_function": self.agg_function,
            "agg_window_millis": self.agg_window_millis,
            "agg_value": self.agg_value,
            "detector": self.detector,
            "anomaly_results": {
                "value_lower_limit": r.value_lower_limit,
                "value_upper_limit": r.value_upper_limit,
                "anomaly_probability": r.anomaly_probability,
                "is_anomaly": r.is_anomaly,
            },
        }


def _iso_ms(ts: datetime) -> str:
    """The table's (and the output message's) text form: 2024-01-01T00:00:00.000Z."""
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def to_utc(value: datetime | str, name: str = "ts") -> datetime:
    """An aware UTC datetime from a datetime (naive = UTC) or an ISO-8601 string."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{name}: not an ISO-8601 timestamp: {value!r}") from None
    if not isinstance(value, datetime):
        raise TypeError(f"{name}: expected a datetime or an ISO-8601 string, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _ceil_ms(ts: datetime) -> datetime:
    """Round up to the millisecond: rows hold whole milliseconds, so ``row >= t`` iff ``row >= ceil(t)``."""
    extra = ts.microsecond % 1000
    return ts if extra == 0 else ts + timedelta(microseconds=1000 - extra)


def _sqlite_ts(text: str) -> datetime:
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text).astimezone(timezone.utc)


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class ResultsRepository:
    """Reads of the result table (see the module docstring); a connection per call."""

    def __init__(
        self,
        url: str,
        table: str = "predictions",
        user: str | None = None,
        password: str | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        if not _TABLE_RE.match(table or ""):
            raise ValueError(f"table must be a plain SQL identifier, got {table!r}")
        if url.startswith("jdbc:sqlite:"):
            self.dialect = "sqlite"
        elif url.startswith("jdbc:postgresql:"):
            self.dialect = "postgresql"
        else:
            raise ValueError("url must start with jdbc:sqlite: or jdbc:postgresql:")
        self.url = url
        self.table = table
        self.user = user
        self._password = password
        self.properties = dict(properties or {})

    @classmethod
    def from_config(cls, config: JdbcConfig) -> ResultsRepository:
        """The job's own sink config; the password comes from its password_env/password_file."""
        return cls(config.url, config.table, config.user, config.resolve_password(), config.properties)

    def __repr__(self) -> str:
        return f"ResultsRepository({self.url.split('?', 1)[0]!r}, table={self.table!r}, user={self.user!r})"

    # -- queries ------------------------------------------------------------------
    def fetch(self, application: str, from_ts: datetime | str, to_ts: datetime | str) -> list[Prediction]:
        """Rows of ``application`` with ``from_ts <= ts < to_ts``, ordered by ts."""
        start, end = _ceil_ms(to_utc(from_ts, "from_ts")), _ceil_ms(to_utc(to_ts, "to_ts"))
        sql = (
            f"SELECT {_FIELDS} FROM {self.table} WHERE application = {{p}} AND ts >= {{p}} AND ts < {{p}} "
            "ORDER BY ts, detector, agg_function, agg_window_millis"
        )
        if self.dialect == "sqlite":
            rows = self._query(sql, (application, _iso_ms(start), _iso_ms(end)))
        else:
            rows = self._query(sql, (application, start, end))
        return [self._prediction(row) for row in rows]

    def get_applications(self) -> list[str]:
        """Every application with at least one row, sorted."""
        return sorted(row[0] for row in self._query(f"SELECT DISTINCT application FROM {self.table}", ()))

    # -- plumbing -----------------------------------------------------------------
    def _prediction(self, row: tuple[Any, ...]) -> Prediction:
        app, ts, function, window, value, detector, lower, upper, prob, flag = row
        ts = _sqlite_ts(ts) if isinstance(ts, str) else ts.astimezone(timezone.utc)
        return Prediction(
            application=app,
            ts=ts,
            agg_function=function,
            agg_window_millis=int(window),
            agg_value=_opt_float(value),
            detector=detector,
            anomaly_results=AnomalyResult(_opt_float(lower), _opt_float(upper), float(prob), bool(flag)),
        )

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        marker = "?" if self.dialect == "sqlite" else "%s"
        try:
            with self._connect() as conn:
                return list(conn.execute(sql.format(p=marker), params).fetchall())
        except RepositoryError:
            raise
        except Exception as err:  # the driver's message, masked; never its chained exception
            error = RepositoryError(self._mask(f"reading table {self.table} ({self.url.split('?', 1)[0]}): {err}"))
        raise error

    def _mask(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        if self.dialect == "sqlite":
            with closing(self._sqlite()) as conn:
                yield conn
        else:
            try:
                import psycopg
            except ImportError:
                raise RepositoryError("reading PostgreSQL needs psycopg 3: pip install 'psycopg[binary]'") from None
            with psycopg.connect(**self._pg_params()) as conn:
                yield conn

    def _sqlite(self) -> sqlite3.Connection:
        path = self.url[len("jdbc:sqlite:") :].split("?", 1)[0]
        if path.startswith("file:"):
            path = unquote(path[len("file:") :])
            if path.startswith("///"):  # file:///abs/path
                path = path[2:]
        if not path or path == ":memory:":
            raise RepositoryError(f"{self.url}: an in-memory SQLite database has nothing to read")
        # read-only: a reader never creates a file nor takes the write lock
        return sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=60)

    def _pg_params(self) -> dict[str, Any]:
        """libpq keywords from a jdbc:postgresql: URL and the connection properties."""
        rest = self.url[len("jdbc:postgresql:") :]
        query = ""
        if "?" in rest:
            rest, query = rest.split("?", 1)
        params: dict[str, Any] = {}
        if rest.startswith("//"):
            hostpart, _, database = rest[2:].partition("/")
            hosts, ports = [], []
            for item in hostpart.split(","):
                if item.startswith("["):  # [ipv6]:port
                    host, _, port = item[1:].partition("]")
                    port = port.lstrip(":")
                else:
                    host, _, port = item.partition(":")
                hosts.append(host or "localhost")
                ports.append(port or "5432")
            params["host"] = ",".join(hosts)
            params["port"] = ",".join(ports)
        else:
            database = rest
            params["host"] = "localhost"
        if database:
            params["dbname"] = unquote(database)
        extra = {k.lower(): v for k, v in parse_qsl(query)}
        extra.update({k.lower(): v for k, v in self.properties.items()})
        for key, value in extra.items():
            if key in _PG_PARAMS:
                params[_PG_PARAMS[key]] = value
            elif key == "currentschema":
                params["options"] = f"-c search_path={value}"
        if self.user:
            params["user"] = self.user
        if self._password is not None:
            params["password"] = self._password
        return params
