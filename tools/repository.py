"""Read API over the job's JDBC result table, without Spark.

The repository API, for users and tests::

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

import json
import math
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from detectors.base import AnomalyResult
from jobs.config import JdbcConfig
from jobs.result_format import TABLE_COLUMNS, iso_ms_of
from jobs.sanitize import is_sql_identifier, mask_secret

__all__ = [
    "AnomalyResult",
    "AppSummary",
    "Prediction",
    "RepositoryError",
    "ResultsRepository",
    "SeriesView",
]

# the table's columns (jobs/result_format.py); a table written before explanations existed reads them as null
_FIELDS = ", ".join("{explanation}" if c == "explanation" else c for c in TABLE_COLUMNS)
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
            "ts": iso_ms_of(self.ts),
            "agg_function": self.agg_function,
            "agg_window_millis": self.agg_window_millis,
            "agg_value": self.agg_value,
            "detector": self.detector,
            "anomaly_results": {
                "value_lower_limit": r.value_lower_limit,
                "value_upper_limit": r.value_upper_limit,
                "anomaly_probability": r.anomaly_probability,
                "is_anomaly": r.is_anomaly,
                # an object on the topic (not a string holding JSON): the same here
                "explanation": None if r.explanation is None else json.loads(r.explanation),
            },
        }


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


@dataclass(frozen=True)
class AppSummary:
    """One row of the dashboard's applications page."""

    application: str
    last_ts: datetime
    last_value: float | None
    anomalies: int  # in the requested range
    last_anomaly_ts: datetime | None  # at any time


@dataclass
class SeriesView:
    """What the charts of one application draw for a time range (see :meth:`ResultsRepository.series`).

    ``lines[(agg_function, agg_window_millis)][detector]`` holds parallel lists
    ``ts`` (epoch ms), ``value``, ``lower``, ``upper``, ``prob``. When the range
    holds more rows than the caller's budget, each detector's rows are reduced to
    min and max per time bucket (two points per bucket: a vertical stroke, the way
    a pixel column would show them), so spikes survive. ``anomalies`` has the same
    shape and is never reduced: every anomaly in range is there.
    """

    from_ms: int
    to_ms: int
    rows: int
    bucket_ms: int | None
    lines: dict[tuple[str, int], dict[str, dict[str, list[Any]]]]
    anomalies: dict[tuple[str, int], dict[str, dict[str, list[Any]]]]


def _columns_dict() -> dict[str, list[Any]]:
    return {"ts": [], "value": [], "lower": [], "upper": [], "prob": []}


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _epoch_ms(ts: datetime | str | int) -> int:
    if isinstance(ts, int):
        return ts
    return round(_ceil_ms(to_utc(ts)).timestamp() * 1000)


def _number(value: Any) -> float | None:
    value = _opt_float(value)
    return None if value is None or math.isinf(value) else value


def _append(
    into: dict[tuple[str, int], dict[str, dict[str, list[Any]]]],
    chart: tuple[str, int],
    detector: str,
    ms: Any,
    value: Any,
    lower: Any,
    upper: Any,
    prob: Any,
) -> None:
    cols = into.setdefault(chart, {}).setdefault(detector, _columns_dict())
    cols["ts"].append(int(ms))
    cols["value"].append(_number(value))
    cols["lower"].append(_number(lower))
    cols["upper"].append(_number(upper))
    cols["prob"].append(_number(prob))


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
        if not is_sql_identifier(table):
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
        self._explanation_column: str | None = None

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
            f"SELECT {self._fields} FROM {self.table} WHERE application = {{p}} AND ts >= {{p}} AND ts < {{p}} "
            "ORDER BY ts, detector, agg_function, agg_window_millis"
        )
        if self.dialect == "sqlite":
            rows = self._query(sql, (application, iso_ms_of(start), iso_ms_of(end)))
        else:
            rows = self._query(sql, (application, start, end))
        return [self._prediction(row) for row in rows]

    def get_applications(self) -> list[str]:
        """Every application with at least one row, sorted."""
        return sorted(row[0] for row in self._query(f"SELECT DISTINCT application FROM {self.table}", ()))

    # -- dashboard queries ----------------------------------------------------------
    # Every value is a bound parameter ({p}); only the checked table name and fixed
    # SQL fragments chosen by dialect are spliced into the text.
    def _ms(self, column: str = "ts") -> str:
        if self.dialect == "sqlite":  # ISO-8601 text with Z: julianday parses it
            return f"CAST(ROUND((julianday({column}) - 2440587.5) * 86400000.0) AS INTEGER)"
        return f"CAST(ROUND(EXTRACT(EPOCH FROM {column}) * 1000) AS BIGINT)"

    @property
    def _is_anomaly(self) -> str:
        return "is_anomaly <> 0" if self.dialect == "sqlite" else "is_anomaly"

    def _bound(self, ts: datetime | str | int, name: str = "ts") -> Any:
        """A query parameter for ``ts`` (epoch ms, datetime or ISO text) in the table's representation."""
        if isinstance(ts, int):
            ts = datetime.fromtimestamp(ts / 1000, tz=timezone.utc)
        value = _ceil_ms(to_utc(ts, name))
        return iso_ms_of(value) if self.dialect == "sqlite" else value

    def _ts(self, value: Any) -> datetime:
        return _sqlite_ts(value) if isinstance(value, str) else value.astimezone(timezone.utc)

    def time_range(self, application: str | None = None) -> tuple[datetime, datetime] | None:
        """First and last ``ts`` of one application (or of the whole table); None when empty."""
        where, params = ("WHERE application = {p}", (application,)) if application is not None else ("", ())
        rows = self._query(f"SELECT MIN(ts), MAX(ts) FROM {self.table} {where}", params)
        if not rows or rows[0][0] is None:
            return None
        return self._ts(rows[0][0]), self._ts(rows[0][1])

    def count_applications(self, search: str = "") -> int:
        where, params = self._search(search)
        return int(self._query(f"SELECT COUNT(DISTINCT application) FROM {self.table} {where}", params)[0][0])

    def _search(self, search: str) -> tuple[str, tuple[Any, ...]]:
        if not search:
            return "", ()
        return "WHERE LOWER(application) LIKE LOWER({p}) ESCAPE '\\'", (f"%{_escape_like(search)}%",)

    def application_summaries(
        self,
        from_ts: datetime | str | int,
        to_ts: datetime | str | int,
        search: str = "",
        sort: str = "recent_anomaly",
        offset: int = 0,
        limit: int = 50,
    ) -> list[AppSummary]:
        """One page of applications (paged and filtered in the database, not here).

        ``sort``: ``name``, ``recent_anomaly`` (latest anomaly first, never-anomalous last)
        or ``anomalies`` (most anomalies in range first); ``search`` is a case-insensitive
        substring of the name.
        """
        order = {
            "name": "application",
            "recent_anomaly": "CASE WHEN last_anomaly IS NULL THEN 1 ELSE 0 END, last_anomaly DESC, application",
            "anomalies": "anomalies DESC, application",
        }.get(sort)
        if order is None:
            raise ValueError(f"sort must be name, recent_anomaly or anomalies, got {sort!r}")
        where, search_params = self._search(search)
        sql = (
            f"SELECT application, MAX(ts) AS last_ts, "
            f"SUM(CASE WHEN {self._is_anomaly} AND ts >= {{p}} AND ts < {{p}} THEN 1 ELSE 0 END) AS anomalies, "
            f"MAX(CASE WHEN {self._is_anomaly} THEN ts END) AS last_anomaly "
            f"FROM {self.table} {where} GROUP BY application"
        )
        # a sub-select: PostgreSQL sorts by output names only when they stand alone
        sql = f"SELECT * FROM ({sql}) s ORDER BY {order} LIMIT {{p}} OFFSET {{p}}"
        params = (self._bound(from_ts, "from_ts"), self._bound(to_ts, "to_ts"), *search_params)
        rows = self._query(sql, (*params, max(0, int(limit)), max(0, int(offset))))
        latest = self._latest_values([r[0] for r in rows])
        return [
            AppSummary(app, self._ts(last), latest.get(app), int(n or 0), self._ts(la) if la is not None else None)
            for app, last, n, la in rows
        ]

    def _latest_values(self, applications: list[str]) -> dict[str, float | None]:
        if not applications:
            return {}
        marks = ", ".join(["{p}"] * len(applications))
        sql = (
            f"SELECT t.application, t.agg_value FROM {self.table} t JOIN "
            f"(SELECT application, MAX(ts) AS m FROM {self.table} WHERE application IN ({marks}) "
            "GROUP BY application) l ON t.application = l.application AND t.ts = l.m "
            "ORDER BY t.application, t.agg_function, t.agg_window_millis, t.detector"
        )
        out: dict[str, float | None] = {}
        for app, value in self._query(sql, tuple(applications)):
            out.setdefault(app, _opt_float(value))
        return out

    def sparklines(
        self, applications: list[str], from_ts: datetime | str | int, to_ts: datetime | str | int, buckets: int = 48
    ) -> dict[str, list[tuple[int, float]]]:
        """Mean ``agg_value`` per time bucket for each application: (bucket start ms, mean)."""
        if not applications:
            return {}
        start, end = self._bound(from_ts, "from_ts"), self._bound(to_ts, "to_ts")
        start_ms, end_ms = _epoch_ms(from_ts), _epoch_ms(to_ts)
        width = max(1, -(-(end_ms - start_ms) // max(1, buckets)))
        marks = ", ".join(["{p}"] * len(applications))
        bucket = f"(({self._ms()} - {{p}}) / {{p}})"
        sql = (
            f"SELECT application, {bucket} AS b, AVG(agg_value) FROM {self.table} "
            f"WHERE application IN ({marks}) AND ts >= {{p}} AND ts < {{p}} "
            "GROUP BY application, b ORDER BY application, b"
        )
        out: dict[str, list[tuple[int, float]]] = {app: [] for app in applications}
        for app, b, mean in self._query(sql, (start_ms, width, *applications, start, end)):
            if mean is not None:
                out[app].append((start_ms + int(b) * width, float(mean)))
        return out

    def series(
        self,
        application: str,
        from_ts: datetime | str | int,
        to_ts: datetime | str | int,
        max_rows: int = 4000,
        buckets: int = 1000,
    ) -> SeriesView:
        """The charts' data for ``from_ts <= ts < to_ts``: every row when there are at most
        ``max_rows``, otherwise min/max per bucket (``buckets`` per range, ~one per pixel
        column); every anomaly in range either way."""
        start, end = self._bound(from_ts, "from_ts"), self._bound(to_ts, "to_ts")
        start_ms, end_ms = _epoch_ms(from_ts), _epoch_ms(to_ts)
        base = f"FROM {self.table} WHERE application = {{p}} AND ts >= {{p}} AND ts < {{p}}"
        rng = (application, start, end)
        rows = int(self._query(f"SELECT COUNT(*) {base}", rng)[0][0])
        lines: dict[tuple[str, int], dict[str, dict[str, list[Any]]]] = {}
        anomalies: dict[tuple[str, int], dict[str, dict[str, list[Any]]]] = {}
        bucket_ms = None
        fields = "agg_function, agg_window_millis, detector"
        if rows <= max_rows:
            sql = (
                f"SELECT {fields}, {self._ms()}, agg_value, value_lower_limit, value_upper_limit, "
                f"anomaly_probability {base} ORDER BY ts"
            )
            for fn, window, det, ms, value, lower, upper, prob in self._query(sql, rng):
                _append(lines, (fn, int(window)), det, ms, value, lower, upper, prob)
        elif self.dialect == "sqlite":
            bucket_ms = max(1, -(-(end_ms - start_ms) // max(1, buckets)))
            self._sqlite_buckets(lines, application, start_ms, end_ms, bucket_ms, base, rng)
        else:
            bucket_ms = max(1, -(-(end_ms - start_ms) // max(1, buckets)))
            bucket = f"(({self._ms()} - {{p}}) / {{p}})"
            sql = (
                f"SELECT {fields}, {bucket} AS b, MIN(agg_value), MAX(agg_value), MIN(value_lower_limit), "
                f"MAX(value_upper_limit), MAX(anomaly_probability) "
                f"FROM {self.table} WHERE application = {{p}} AND ts >= {{p}} AND ts < {{p}} "
                f"GROUP BY {fields}, b ORDER BY {fields}, b"
            )
            for fn, window, det, b, vmin, vmax, lower, upper, prob in self._query(sql, (start_ms, bucket_ms, *rng)):
                ms = start_ms + int(b) * bucket_ms
                for value in (vmin, vmax):
                    _append(lines, (fn, int(window)), det, ms, value, lower, upper, prob)
        sql = (
            f"SELECT {fields}, {self._ms()}, agg_value, value_lower_limit, value_upper_limit, "
            f"anomaly_probability {base} AND {self._is_anomaly} ORDER BY ts"
        )
        for fn, window, det, ms, value, lower, upper, prob in self._query(sql, rng):
            _append(anomalies, (fn, int(window)), det, ms, value, lower, upper, prob)
        return SeriesView(start_ms, end_ms, rows, bucket_ms, lines, anomalies)

    def _sqlite_buckets(
        self,
        lines: dict[tuple[str, int], dict[str, dict[str, list[Any]]]],
        application: str,
        start_ms: int,
        end_ms: int,
        bucket_ms: int,
        base: str,
        rng: tuple[Any, ...],
    ) -> None:
        """Min/max per bucket in SQLite: one small query per (chart, detector, bucket) on the
        primary key, which is ordered by ts within a (application, detector, agg_function,
        agg_window_millis) -- no sort. (One GROUP BY over the range sorts every row in a temp
        b-tree: measured twice the CPU on 1,000,000 rows, see bench/dashboard_render.py.)"""
        combos = self._query(f"SELECT DISTINCT detector, agg_function, agg_window_millis {base}", rng)
        edges = [*range(start_ms, end_ms, bucket_ms), end_ms]
        bounds = [iso_ms_of(datetime.fromtimestamp(ms / 1000, tz=timezone.utc)) for ms in edges]
        sql = (
            "SELECT MIN(agg_value), MAX(agg_value), MIN(value_lower_limit), MAX(value_upper_limit), "
            f"MAX(anomaly_probability), COUNT(*) FROM {self.table} WHERE application = ? AND detector = ? "
            "AND agg_function = ? AND agg_window_millis = ? AND ts >= ? AND ts < ?"
        )
        try:
            with self._connect() as conn:
                for det, fn, window in sorted(combos, key=lambda c: (c[1], c[2], c[0])):
                    for i in range(len(edges) - 1):
                        row = conn.execute(sql, (application, det, fn, window, bounds[i], bounds[i + 1])).fetchone()
                        vmin, vmax, lower, upper, prob, n = row
                        if n:
                            for value in (vmin, vmax):
                                _append(lines, (fn, int(window)), det, edges[i], value, lower, upper, prob)
        except sqlite3.Error as err:
            raise RepositoryError(
                self._mask(f"reading table {self.table} ({self.url.split('?', 1)[0]}): {err}")
            ) from None

    def detector_summary(
        self, application: str, from_ts: datetime | str | int, to_ts: datetime | str | int
    ) -> list[tuple[str, int, int, datetime, datetime]]:
        """Per detector of ``application`` in range: (detector, points, anomalies, first ts, last ts)."""
        sql = (
            f"SELECT detector, COUNT(*), SUM(CASE WHEN {self._is_anomaly} THEN 1 ELSE 0 END), MIN(ts), MAX(ts) "
            f"FROM {self.table} WHERE application = {{p}} AND ts >= {{p}} AND ts < {{p}} "
            "GROUP BY detector ORDER BY detector"
        )
        rows = self._query(sql, (application, self._bound(from_ts, "from_ts"), self._bound(to_ts, "to_ts")))
        return [(d, int(n), int(a or 0), self._ts(first), self._ts(last)) for d, n, a, first, last in rows]

    def rows_after(self, application: str, after_ms: int, limit: int = 5000) -> list[Prediction]:
        """Rows of ``application`` with ``ts`` later than ``after_ms`` (the live channel's poll), oldest first."""
        sql = (
            f"SELECT {self._fields} FROM {self.table} WHERE application = {{p}} AND ts > {{p}} "
            "ORDER BY ts, detector, agg_function, agg_window_millis LIMIT {p}"
        )
        after = datetime.fromtimestamp(after_ms / 1000, tz=timezone.utc)
        bound = iso_ms_of(after) if self.dialect == "sqlite" else after
        return [self._prediction(row) for row in self._query(sql, (application, bound, int(limit)))]

    # -- plumbing -----------------------------------------------------------------
    def _prediction(self, row: tuple[Any, ...]) -> Prediction:
        app, ts, function, window, value, detector, lower, upper, prob, flag, explanation = row
        ts = _sqlite_ts(ts) if isinstance(ts, str) else ts.astimezone(timezone.utc)
        return Prediction(
            application=app,
            ts=ts,
            agg_function=function,
            agg_window_millis=int(window),
            agg_value=_opt_float(value),
            detector=detector,
            anomaly_results=AnomalyResult(_opt_float(lower), _opt_float(upper), float(prob), bool(flag), explanation),
        )

    @property
    def _fields(self) -> str:
        """The result columns; a table written before explanations existed reads them as null."""
        if self._explanation_column is None:
            if self.dialect == "sqlite":
                names = {row[1] for row in self._query(f"PRAGMA table_info({self.table})", ())}
            else:
                names = {
                    row[0]
                    for row in self._query(
                        "SELECT column_name FROM information_schema.columns WHERE table_name = {p}", (self.table,)
                    )
                }
            self._explanation_column = "explanation" if "explanation" in names else "NULL AS explanation"
        return _FIELDS.format(explanation=self._explanation_column)

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
        return mask_secret(text, self._password)

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
