"""Where each stream's query is assembled, one stage per module, data flowing one way::

    read + validate + watermark   jobs/source.py            Kafka records -> events, rejects kept
    pack                          jobs/packing.py           bucket = pmod(xxhash64(application), buckets);
                                                            Arrow rows per (bucket, source partition)
    window + score                jobs/stateful_operator.py groupBy(bucket).transformWithStateInPandas, a
                                  jobs/stateful_step.py     thin processor over the pure per-bucket step
                                  jobs/windows.py           (event-time windows) and detectors/
    write                         jobs/sinks.py, jobs/jdbc.py  foreachBatch: results to Kafka + JDBC,
                                                            dead letters to their topic

The columns every stage agrees on are declared once in jobs/result_format.py.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from jobs.config import JobConfig, SourceConfig, StreamConfig
from jobs.incident_tables import IncidentTables
from jobs.jdbc import JdbcTable
from jobs.packing import pack
from jobs.sinks import STATS_METRICS, batch_stats_columns, make_batch_writer
from jobs.source import ensure_feedback_topic, parse_messages, read_kafka, with_watermark
from jobs.stateful_operator import OUTPUT_SCHEMA, BucketProcessor

log = logging.getLogger("anomaly.job")


def score_events(records: Any, stream: StreamConfig) -> Any:
    """Kafka-shaped records -> operator output (results and dead letters), unwritten.

    ``records`` has the Kafka source's columns (key, value, topic, partition,
    offset, timestamp); tests feed it from a file stream instead of Kafka.
    """
    events = with_watermark(parse_messages(records, source_of(stream)), stream.aggregation.allowed_lateness_millis)
    return (
        pack(events, stream.buckets)
        .groupBy("bucket")
        .transformWithStateInPandas(
            statefulProcessor=BucketProcessor(stream),
            outputStructType=OUTPUT_SCHEMA,
            outputMode="Append",
            timeMode="EventTime",
        )
    )


def source_of(stream: StreamConfig) -> SourceConfig:
    """The stream's source; incident feedback is read only while the incident layer is on."""
    return stream.source if stream.incidents.enabled else replace(stream.source, feedback_topic=None)


def start_stream(spark: Any, job: JobConfig, stream: StreamConfig, checkpoint: str) -> Any:
    """Build and start one stream's query (its checkpoint already checked by jobs.main.run)."""
    jdbc = JdbcTable(spark, stream.sinks.jdbc, stream.name) if stream.sinks.jdbc else None
    if jdbc is not None:
        jdbc.ensure_schema()
        if stream.incidents.enabled:
            IncidentTables(jdbc).ensure_schema()
    # counted while the sink writes the batch, reported with its progress (jobs/progress.py)
    source = source_of(stream)
    ensure_feedback_topic(spark, source)
    scored = score_events(read_kafka(spark, source), stream).observe(STATS_METRICS, *batch_stats_columns())
    writer = (
        scored.writeStream.queryName(stream.name)
        .option("checkpointLocation", checkpoint)
        .foreachBatch(make_batch_writer(stream, jdbc))
    )
    if job.trigger == "available_now":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=job.trigger_interval)
    query = writer.start()
    log.info(
        "[%s] reading %s from %s, %s over %s ms, detectors %s -> %s",
        stream.name,
        stream.source.topic_pattern or ",".join(stream.source.topics),
        stream.source.bootstrap_servers,
        stream.aggregation.agg_function,
        stream.aggregation.agg_window_millis,
        ",".join(d.label for d in stream.detectors),
        ", ".join(
            x
            for x in (
                stream.sinks.output_topic and f"topic {stream.sinks.output_topic}",
                stream.sinks.jdbc and f"table {stream.sinks.jdbc.table}",
                f"dead letters {stream.sinks.dead_letter_topic}",
            )
            if x
        ),
    )
    return query
