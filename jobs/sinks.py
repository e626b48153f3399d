"""Sink stage: each micro-batch of operator output -> Kafka results, dead letters, JDBC.

Runs as ``foreachBatch``. The batch becomes, in ONE Kafka write (a ``topic``
column routes each record):

* results -> the output topic, JSON with the detector's fields (bounds,
  probability, flag, explanation) nested in ``anomaly_results``, with a
  deterministic key ``{"application","detector","agg_function",
  "agg_window_millis","ts"}`` so a consumer can drop the duplicates that
  at-least-once delivery produces after a restart;
* dead letters -> the dead-letter topic: the original record bytes and key,
  unchanged, with the reason, detail and source topic/partition/offset in
  Kafka headers (``anomaly.reason``, ``anomaly.detail``, ``anomaly.source``),
  so a fixed record can be replayed as is;

and then, if configured, results -> the JDBC table, as an idempotent upsert
(jobs/jdbc.py).

Why one write: every action on the batch runs the stateful operator over it
again unless the batch is cached, and caching a batch that is written once
costs more than the write (measured: persist + count + two writes took 4.0-4.5 s
per 250,000 results where one write took 3.4 s). So a batch is cached only
when the JDBC upsert reads it a second time, and the counts for the progress
line are not a separate pass either: the query observes them
(:func:`batch_stats_columns`, ``DataFrame.observe``) while the write runs, and
Spark hands them to the progress listener (jobs/progress.py) with the batch's
progress. The sink itself keeps only its phase timings on :data:`BOARD`.

Fault injection (tests only): ``write_batch`` calls :func:`jobs.faults.fault_point`
at ``before_kafka`` (nothing of the batch written yet), ``after_kafka`` (results
and dead letters are on Kafka, the JDBC upsert has not started) and
``after_jdbc`` (the upsert is committed, Spark has not yet written the batch's
commit file); jobs/jdbc.py adds ``during_jdbc_merge``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.config import StreamConfig
from jobs.faults import fault_point
from jobs.incident_tables import IncidentTables
from jobs.jdbc import JdbcTable
from jobs.result_format import (
    ANOMALY_RESULT_FIELDS,
    DEAD_LETTER_REASONS,
    KIND_DEAD_LETTER,
    KIND_INCIDENT,
    KIND_RESULT,
    MESSAGE_FIELDS,
    SPARK_ISO_MS_PATTERN,
    TABLE_KEY,
)

# the name of the observed metrics (StreamingQueryProgress.observedMetrics) holding a batch's counts
STATS_METRICS = "batch_stats"


def batch_stats_columns() -> list[F.Column]:
    """What the query observes on the operator's output: counts of one batch, taken while it is written."""
    is_result = F.col("kind") == KIND_RESULT
    is_dead = F.col("kind") == KIND_DEAD_LETTER
    return [
        F.count_if(is_result).alias("results"),
        F.count_if(is_result & F.coalesce(F.col("is_anomaly"), F.lit(False))).alias("anomalies"),
        F.count_if(is_dead).alias("dead_letters"),
        # one map, not a column per reason: Spark warns about (and truncates) plans over 25 fields
        F.map_from_arrays(
            F.array(*[F.lit(r) for r in DEAD_LETTER_REASONS]),
            F.array(*[F.count_if(is_dead & (F.col("reason") == r)) for r in DEAD_LETTER_REASONS]),
        ).alias("by_reason"),
    ]


@dataclass
class BatchStats:
    results: int = 0
    anomalies: int = 0
    dead_letters: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of_metrics(cls, metrics: Mapping[str, Any]) -> BatchStats:
        """From the observed metrics of :func:`batch_stats_columns` (a Row or a dict).

        >>> stats = BatchStats.of_metrics({"results": 5, "anomalies": 1, "dead_letters": 3,
        ...     "by_reason": {"late": 2, "invalid_json": 0, "duplicate": 0}})
        >>> stats.by_reason
        {'late': 2, 'other': 1}
        """
        values = metrics.asDict() if hasattr(metrics, "asDict") else dict(metrics)
        by_reason = {reason: int(count) for reason, count in (values.get("by_reason") or {}).items() if count}
        dead_letters = int(values.get("dead_letters") or 0)
        unnamed = dead_letters - sum(by_reason.values())
        if unnamed > 0:  # a reason missing from DEAD_LETTER_REASONS: counted, not hidden
            by_reason["other"] = unnamed
        return cls(int(values.get("results") or 0), int(values.get("anomalies") or 0), dead_letters, by_reason)


class StatsBoard:
    """Per (stream, batch id) sink timings, written by foreachBatch, read by the listener.

    Wall seconds per phase of the sink: "kafka" (computing the batch and writing it), "jdbc".
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, int], dict[str, float]] = {}

    def put(self, stream: str, batch_id: int, seconds: dict[str, float]) -> None:
        with self._lock:
            self._stats[(stream, batch_id)] = seconds
            # keep the board small: the listener reads each batch right after it ends
            for key in [k for k in self._stats if k[0] == stream and k[1] < batch_id - 100]:
                del self._stats[key]

    def pop(self, stream: str, batch_id: int) -> dict[str, float] | None:
        with self._lock:
            return self._stats.pop((stream, batch_id), None)


BOARD = StatsBoard()


def _iso_ts(column: str) -> F.Column:
    return F.date_format(F.timestamp_millis(column), SPARK_ISO_MS_PATTERN)


def _result_key_value() -> tuple[F.Column, F.Column]:
    """Kafka key and value of a result row."""
    # the text forms of the columns that are not plain values: the event time as ISO-8601 ms,
    # the explanation as a JSON object in the message (not a string holding JSON)
    shaped = {"ts": _iso_ts("ts_ms").alias("ts"), "explanation": F.parse_json("explanation").alias("explanation")}
    key = F.to_json(F.struct(*[shaped.get(c, F.col(c)) for c in TABLE_KEY]))
    value = F.to_json(
        F.struct(
            *[shaped.get(c, F.col(c)) for c in MESSAGE_FIELDS],
            F.struct(*[shaped.get(c, F.col(c)) for c in ANOMALY_RESULT_FIELDS]).alias("anomaly_results"),
        ),
        {"ignoreNullFields": "false"},
    )
    return key.cast("binary"), value.cast("binary")


def _dead_letter_key_value_headers() -> tuple[F.Column, F.Column, F.Column]:
    """Kafka key, value and headers of a dead-letter row."""
    source = F.to_json(
        F.struct(
            F.col("src_topic").alias("topic"),
            F.col("src_partition").alias("partition"),
            F.col("src_offset").alias("offset"),
        )
    )
    # A detector error has no source record: describe the point instead.
    point = F.to_json(
        F.struct("application", _iso_ts("ts_ms").alias("ts"), F.col("agg_value").alias("value"), "detector")
    )
    headers = F.array(
        F.struct(F.lit("anomaly.reason").alias("key"), F.col("reason").cast("binary").alias("value")),
        F.struct(F.lit("anomaly.detail").alias("key"), F.col("detail").cast("binary").alias("value")),
        F.struct(F.lit("anomaly.source").alias("key"), source.cast("binary").alias("value")),
    )
    value = F.when(F.col("src_topic").isNotNull(), F.col("raw")).otherwise(point.cast("binary"))
    return F.col("kafka_key"), value, headers


def kafka_records(
    batch: DataFrame, output_topic: str | None, dead_letter_topic: str, incidents_topic: str | None = None
) -> DataFrame:
    """topic/key/value/headers of every Kafka record of a batch: one projection, so one pass.

    Results go to ``output_topic`` (dropped here when there is none: they go to
    JDBC only), dead letters to ``dead_letter_topic``, incident transitions to
    ``incidents_topic`` (keyed by incident id; dropped when there is none). A
    filter-and-union of the kinds would read the batch twice, and so run the
    operator twice.
    """
    is_result = F.col("kind") == KIND_RESULT
    is_incident = F.col("kind") == KIND_INCIDENT
    result_key, result_value = _result_key_value()
    dead_key, dead_value, dead_headers = _dead_letter_key_value_headers()
    rows = batch
    if not output_topic:
        rows = rows.filter(~is_result)
    if not incidents_topic:
        rows = rows.filter(~is_incident)
    return rows.select(
        F.when(is_result, F.lit(output_topic))
        .when(is_incident, F.lit(incidents_topic))
        .otherwise(F.lit(dead_letter_topic))
        .alias("topic"),
        F.when(is_result, result_key).when(is_incident, F.col("kafka_key")).otherwise(dead_key).alias("key"),
        F.when(is_result, result_value)
        .when(is_incident, F.col("detail").cast("binary"))
        .otherwise(dead_value)
        .alias("value"),
        F.when(is_result | is_incident, F.lit(None)).otherwise(dead_headers).alias("headers"),
    )


def make_batch_writer(stream: StreamConfig, jdbc: JdbcTable | None) -> Callable[[DataFrame, int], None]:
    """The foreachBatch function of one stream's query."""
    kafka_options = {"kafka.bootstrap.servers": stream.output_bootstrap_servers, **stream.producer_options}
    sinks = stream.sinks
    if sinks.dead_letter_topic is None:  # jobs/config.py refuses such a stream; this keeps the type exact
        raise ValueError(f"{stream.name}.sinks.dead_letter_topic is required")
    dead_letter_topic = sinks.dead_letter_topic
    incidents_on = stream.incidents.enabled
    incidents_topic = sinks.incidents_topic if incidents_on else None
    incident_tables = IncidentTables(jdbc) if jdbc is not None and incidents_on else None

    def write_batch(batch: DataFrame, batch_id: int) -> None:
        seconds: dict[str, float] = {}
        clock = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.monotonic()
            seconds[phase] = seconds.get(phase, 0.0) + now - clock
            clock = now

        # cached only when a second action (the JDBC upsert) reads it: see the module docstring
        cached = jdbc is not None
        if cached:
            batch = batch.persist()
        try:
            fault_point("before_kafka", batch_id)
            # the one action that runs the operator over the batch
            records = kafka_records(batch, sinks.output_topic, dead_letter_topic, incidents_topic)
            records.write.format("kafka").options(**kafka_options).save()
            lap("kafka")
            fault_point("after_kafka", batch_id)
            if jdbc is not None:
                results = batch.filter(F.col("kind") == KIND_RESULT)
                if not results.isEmpty():  # from the cache: no merge transaction for a batch without results
                    jdbc.upsert(results)
                if incident_tables is not None:  # few rows (transitions, not windows): collected, from the cache
                    rows = batch.filter(F.col("kind") == KIND_INCIDENT).select("detail").collect()
                    incident_tables.write(row[0] for row in rows)
                lap("jdbc")
            fault_point("after_jdbc", batch_id)
            BOARD.put(stream.name, batch_id, seconds)
        finally:
            if cached:
                batch.unpersist()

    return write_batch
