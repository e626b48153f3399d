"""Source stage: Kafka records -> validated events, rejects marked with a reason.

Input messages are JSON objects ``{"application": str, "value": number, "ts":
ISO-8601 string}``. Validation runs entirely in the JVM (Spark's VARIANT JSON
parser and SQL expressions, no Python UDF), so it costs little per event.

Every record comes out as one row of :data:`EVENT_COLUMNS`. A valid record has
``reason`` null and ``gkey`` = its application; an invalid one has ``gkey`` =
:data:`jobs.detection.INVALID_KEY`, a ``reason`` code and a human ``detail``,
and keeps its original bytes, key and topic/partition/offset so the dead-letter
topic can say exactly which record was refused and why. Valid records carry
only their topic/partition/offset (a late one is re-encoded from its fields).

Reason codes: ``null_value`` (tombstone), ``invalid_utf8``, ``invalid_json``,
``not_an_object``, ``missing_field``, ``null_field``, ``wrong_type``,
``empty_application``, ``invalid_application``, ``value_not_finite``,
``ts_unparseable``, ``ts_no_timezone``, ``ts_out_of_range``. Later stages add
``late`` and ``detector_error``.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs.config import SourceConfig
from jobs.detection import INVALID_KEY

EVENT_COLUMNS = [
    "gkey",
    "ts_ms",
    "value",
    "reason",
    "detail",
    "raw",
    "kafka_key",
    "src_topic",
    "src_partition",
    "src_offset",
    "event_time",
]
MAX_APPLICATION_LENGTH = 512
_NUMERIC_TYPES = ("BIGINT", "INT", "SMALLINT", "TINYINT", "DOUBLE", "FLOAT")
# Z, or an offset like +02:00 / -0530 / +02, at the end of the string
_TZ_SUFFIX = r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)$"


def read_kafka(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """The raw Kafka stream: key, value (binary), topic, partition, offset, timestamp."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", source.bootstrap_servers)
        .option("startingOffsets", source.starting_offsets)
    )
    if source.topic_pattern is not None:
        reader = reader.option("subscribePattern", source.topic_pattern)
    else:
        reader = reader.option("subscribe", ",".join(source.topics))
    if source.max_offsets_per_trigger is not None:
        reader = reader.option("maxOffsetsPerTrigger", str(source.max_offsets_per_trigger))
    for key, value in source.kafka_options.items():
        reader = reader.option(key, value)
    return reader.load()


def _type_of(variant: Column) -> Column:
    """'STRING', 'BIGINT', 'DOUBLE', 'DECIMAL(3,1)', 'OBJECT<...>', 'NULL'... or SQL NULL if absent."""
    return F.schema_of_variant(variant)


def parse_messages(kafka_df: DataFrame, source: SourceConfig) -> DataFrame:
    """Validate every record; returns :data:`EVENT_COLUMNS` (see the module docstring)."""
    text = F.col("value").cast("string")
    df = kafka_df.select(
        F.col("key").alias("kafka_key"),
        F.col("value").alias("raw"),
        F.col("topic").alias("src_topic"),
        F.col("partition").alias("src_partition"),
        F.col("offset").alias("src_offset"),
        F.col("timestamp").alias("kafka_ts"),
        F.when(F.col("value").isNull(), F.lit(None)).otherwise(F.is_valid_utf8(text)).alias("utf8_ok"),
        F.try_parse_json(text).alias("v"),
    )
    v = F.col("v")
    df = df.select(
        "*",
        _type_of(v).alias("t_msg"),
        _type_of(F.variant_get(v, "$.application", "variant")).alias("t_app"),
        _type_of(F.variant_get(v, "$.value", "variant")).alias("t_value"),
        _type_of(F.variant_get(v, "$.ts", "variant")).alias("t_ts"),
    )
    app = F.try_variant_get(v, "$.application", "string")
    value = F.try_variant_get(v, "$.value", "double")
    ts_text = F.try_variant_get(v, "$.ts", "string")
    # RFC 3339 allows a lower-case "z"; Spark's parser only takes "Z"
    ts = F.try_to_timestamp(F.regexp_replace(F.trim(ts_text), "z$", "Z"))
    df = df.select("*", app.alias("application"), value.alias("num"), ts_text.alias("ts_text"), ts.alias("ts"))

    is_number = F.col("t_value").isin(*_NUMERIC_TYPES) | F.col("t_value").startswith("DECIMAL")
    checks: list[tuple[Column, str, Column]] = [
        (F.col("raw").isNull(), "null_value", F.lit("record has no value (tombstone)")),
        (~F.col("utf8_ok"), "invalid_utf8", F.lit("value is not valid UTF-8")),
        (v.isNull(), "invalid_json", F.lit("value is not valid JSON")),
        (
            ~F.col("t_msg").startswith("OBJECT"),
            "not_an_object",
            F.concat(F.lit("value must be a JSON object, got "), F.split(F.col("t_msg"), "[<(]")[0]),
        ),
    ]
    for name, type_col, expected, ok in (
        ("application", F.col("t_app"), "a string", F.col("t_app") == "STRING"),
        ("value", F.col("t_value"), "a number", is_number),
        ("ts", F.col("t_ts"), "an ISO-8601 string", F.col("t_ts") == "STRING"),
    ):
        checks.append((type_col.isNull(), "missing_field", F.lit(f"{name} is missing")))
        checks.append((type_col.isin("VOID", "NULL"), "null_field", F.lit(f"{name} is null")))
        checks.append(
            (
                ~ok,
                "wrong_type",
                F.concat(F.lit(f"{name} must be {expected}, got "), F.split(type_col, "[<(]")[0]),
            )
        )
    application = F.col("application")
    checks += [
        (F.length(F.trim(application)) == 0, "empty_application", F.lit("application is empty")),
        (
            (F.length(application) > MAX_APPLICATION_LENGTH) | application.rlike(r"[\x00-\x1f\x7f]"),
            "invalid_application",
            F.lit(f"application must be at most {MAX_APPLICATION_LENGTH} characters, no control characters"),
        ),
        (
            F.col("num").isNull() | F.isnan("num") | (F.abs("num") == float("inf")),
            "value_not_finite",
            F.lit("value must be a finite number"),
        ),
        (
            F.col("ts").isNull(),
            "ts_unparseable",
            F.concat(F.lit("ts is not an ISO-8601 timestamp: "), F.substring(F.col("ts_text"), 1, 64)),
        ),
    ]
    if source.require_timezone:
        checks.append(
            (
                ~F.trim(F.col("ts_text")).rlike(_TZ_SUFFIX),
                "ts_no_timezone",
                F.lit("ts must carry a timezone (Z or an offset such as +02:00)"),
            )
        )
    ts_ms = F.unix_millis(F.col("ts"))
    checks += [
        (ts_ms < 0, "ts_out_of_range", F.lit("ts is before 1970-01-01T00:00:00Z")),
        (
            ts_ms > F.unix_millis(F.col("kafka_ts")) + F.lit(source.max_future_millis),
            "ts_out_of_range",
            F.lit(f"ts is more than {source.max_future_millis} ms ahead of the Kafka record timestamp"),
        ),
    ]
    reason = F.lit(None).cast("string")
    detail = F.lit(None).cast("string")
    # Build CASE WHEN ... from the last check to the first so the first failing check wins.
    for condition, code, text_col in reversed(checks):
        reason = F.when(F.coalesce(condition, F.lit(False)), F.lit(code)).otherwise(reason)
        detail = F.when(F.coalesce(condition, F.lit(False)), text_col).otherwise(detail)
    df = df.select("*", reason.alias("reason"), detail.alias("detail"))
    valid = F.col("reason").isNull()
    return df.select(
        F.when(valid, application).otherwise(F.lit(INVALID_KEY)).alias("gkey"),
        F.when(valid, ts_ms).alias("ts_ms"),
        F.when(valid, F.col("num")).alias("value"),
        "reason",
        "detail",
        # the original bytes ride along only for rejects: shipping every valid
        # record's bytes through the shuffle would double what the operator reads
        F.when(~valid, F.col("raw")).alias("raw"),
        F.when(~valid, F.col("kafka_key")).alias("kafka_key"),
        "src_topic",
        "src_partition",
        "src_offset",
        F.when(valid, F.col("ts")).alias("event_time"),
    )


def with_watermark(events: DataFrame, allowed_lateness_millis: int) -> DataFrame:
    """Attach the watermark, then hide it from the stateful operator.

    ``withWatermark`` makes Spark track max(event time) - lateness across the
    query. Spark's stateful operators also *drop* input rows behind the
    watermark when their input column carries the watermark marker. Rebuilding
    the column (``timestamp_millis(ts_ms)``) removes the marker, so late events
    reach our operator, which dead-letters them instead of losing them; the
    watermark itself still reaches the operator through its timer values.
    """
    marked = events.withWatermark("event_time", f"{int(allowed_lateness_millis)} milliseconds")
    return marked.select(*[c for c in EVENT_COLUMNS if c != "event_time"])
