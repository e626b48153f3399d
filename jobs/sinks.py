"""Sink stage: each micro-batch of operator output -> Kafka results, dead letters, JDBC.

Runs as ``foreachBatch``. The batch is persisted once and written three ways:

* results -> the output topic, JSON shaped like the seed framework's
  OutputMessage (``anomaly_results`` holds the four detector fields), with a
  deterministic key ``{"application","detector","agg_function",
  "agg_window_millis","ts"}`` so a consumer can drop the duplicates that
  at-least-once delivery produces after a restart;
* dead letters -> the dead-letter topic: the original record bytes and key,
  unchanged, with the reason, detail and source topic/partition/offset in
  Kafka headers (``anomaly.reason``, ``anomaly.detail``, ``anomaly.source``),
  so a fixed record can be replayed as is;
* results -> the JDBC table, as an idempotent upsert (jobs/jdbc.py).

The counts of each batch are kept for the progress listener (jobs/progress.py).

Fault injection (tests only): ``write_batch`` calls :func:`jobs.faults.fault_point`
at ``before_kafka`` (after the batch is persisted and counted), ``after_kafka``
(results and dead letters are on Kafka, the JDBC upsert has not started) and
``after_jdbc`` (the upsert is committed, Spark has not yet written the batch's
commit file); jobs/jdbc.py adds ``during_jdbc_merge``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.config import StreamConfig
from jobs.faults import fault_point
from jobs.jdbc import JdbcTable
from jobs.result_format import (
    ANOMALY_RESULT_FIELDS,
    KIND_DEAD_LETTER,
    KIND_RESULT,
    MESSAGE_FIELDS,
    SPARK_ISO_MS_PATTERN,
    TABLE_KEY,
)


@dataclass
class BatchStats:
    results: int = 0
    anomalies: int = 0
    dead_letters: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    # wall seconds per phase of the sink: "compute" (operator + counting), "kafka", "jdbc"
    seconds: dict[str, float] = field(default_factory=dict)


class StatsBoard:
    """Per (stream, batch id) counts, written by foreachBatch, read by the listener."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, int], BatchStats] = {}

    def put(self, stream: str, batch_id: int, stats: BatchStats) -> None:
        with self._lock:
            self._stats[(stream, batch_id)] = stats
            # keep the board small: the listener reads each batch right after it ends
            for key in [k for k in self._stats if k[0] == stream and k[1] < batch_id - 100]:
                del self._stats[key]

    def pop(self, stream: str, batch_id: int) -> BatchStats | None:
        with self._lock:
            return self._stats.pop((stream, batch_id), None)


BOARD = StatsBoard()


def _iso_ts(column: str) -> F.Column:
    return F.date_format(F.timestamp_millis(column), SPARK_ISO_MS_PATTERN)


def result_messages(results: DataFrame) -> DataFrame:
    """Kafka key/value columns for result rows."""
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
    return results.select(key.cast("binary").alias("key"), value.cast("binary").alias("value"))


def dead_letter_messages(dead: DataFrame) -> DataFrame:
    """Kafka key/value/headers columns for dead-letter rows."""
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
    return dead.select(F.col("kafka_key").alias("key"), value.alias("value"), headers.alias("headers"))


def make_batch_writer(stream: StreamConfig, jdbc: JdbcTable | None) -> Callable[[DataFrame, int], None]:
    """The foreachBatch function of one stream's query."""
    kafka_options = {"kafka.bootstrap.servers": stream.output_bootstrap_servers, **stream.producer_options}
    sinks = stream.sinks

    def write_kafka(messages: DataFrame, topic: str) -> None:
        messages.write.format("kafka").options(**kafka_options, topic=topic).save()

    def write_batch(batch: DataFrame, batch_id: int) -> None:
        batch = batch.persist()
        stats = BatchStats()
        clock = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.monotonic()
            stats.seconds[phase] = stats.seconds.get(phase, 0.0) + now - clock
            clock = now

        try:
            # the first action runs the operator for the whole batch (persisted: once)
            counts = batch.groupBy("kind", "is_anomaly", "reason").count().collect()
            for row in counts:
                if row["kind"] == KIND_RESULT:
                    stats.results += row["count"]
                    stats.anomalies += row["count"] if row["is_anomaly"] else 0
                else:
                    stats.dead_letters += row["count"]
                    stats.by_reason[row["reason"]] = stats.by_reason.get(row["reason"], 0) + row["count"]
            results = batch.filter(F.col("kind") == KIND_RESULT)
            lap("compute")
            fault_point("before_kafka", batch_id)
            if stats.results and sinks.output_topic:
                write_kafka(result_messages(results), sinks.output_topic)
            if stats.dead_letters and sinks.dead_letter_topic:
                write_kafka(
                    dead_letter_messages(batch.filter(F.col("kind") == KIND_DEAD_LETTER)), sinks.dead_letter_topic
                )
            lap("kafka")
            fault_point("after_kafka", batch_id)
            if stats.results and jdbc is not None:
                jdbc.upsert(results)
                lap("jdbc")
            fault_point("after_jdbc", batch_id)
            BOARD.put(stream.name, batch_id, stats)
        finally:
            batch.unpersist()

    return write_batch
