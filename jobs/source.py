"""Source stage: Kafka records -> validated events, rejects marked with a reason.

Input messages are JSON objects ``{"application": str, "value": number, "ts":
ISO-8601 string}``. Validation runs entirely in the JVM (Spark's VARIANT JSON
parser and SQL expressions, no Python UDF), so it costs little per event.

Every record comes out as one row of :data:`VALIDATED_COLUMNS`. A valid record has
``reason`` null and ``gkey`` = its application; an invalid one has ``gkey`` =
:data:`INVALID_KEY`, a ``reason`` code and a human ``detail``,
and keeps its original bytes, key and topic/partition/offset so the dead-letter
topic can say exactly which record was refused and why. Valid records carry
only their topic/partition/offset (a late one is re-encoded from its fields).

Reason codes: ``null_value`` (tombstone), ``invalid_utf8``, ``invalid_json``,
``not_an_object``, ``missing_field``, ``null_field``, ``wrong_type``,
``empty_application``, ``invalid_application``, ``value_not_finite``,
``ts_unparseable``, ``ts_no_timezone``, ``ts_out_of_range``. The stateful step
(jobs/stateful_step.py) adds ``late``, ``duplicate``, ``conflicting_value`` and
``detector_error`` for valid events it does not score.

Incident feedback (``source.feedback_topic``, JSON ``{"application", "incident_id",
"label", "ts", "by", "comment"}``) is read by the same query, so it is ordered,
checkpointed and replayed with the metrics: a valid one becomes an event of its
application with ``detail`` = the incident id, ``value`` = the label's index in
:data:`incidents.machine.LABELS` and ``ts_ms`` = its ``ts`` (else the Kafka
record's timestamp), and no event time (feedback never moves the watermark); an
invalid one is rejected as ``invalid_feedback``.
"""

from __future__ import annotations

import re
import time

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from incidents.machine import LABELS
from jobs.config import SourceConfig

# The group key of rejected records. Cannot collide with an application name:
# validation refuses control characters in it.
INVALID_KEY = "\u0000invalid"
VALIDATED_COLUMNS = [
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
_FAST_SCHEMA = "application STRING, value DOUBLE, ts STRING"
# both fields present as JSON strings somewhere in the text (checked exactly by the diagnosis)
_APPLICATION_IS_STRING = r'"application"\s*:\s*"'
_TS_IS_STRING = r'"ts"\s*:\s*"'


def read_kafka(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """The raw Kafka stream: key, value (binary), topic, partition, offset, timestamp."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", source.bootstrap_servers)
        .option("startingOffsets", source.starting_offsets)
    )
    feedback = source.feedback_topic
    if source.topic_pattern is not None:
        pattern = source.topic_pattern if feedback is None else f"(?:{source.topic_pattern})|{re.escape(feedback)}"
        reader = reader.option("subscribePattern", pattern)
    else:
        reader = reader.option("subscribe", ",".join([*source.topics, *([feedback] if feedback else [])]))
    if source.max_offsets_per_trigger is not None:
        reader = reader.option("maxOffsetsPerTrigger", str(source.max_offsets_per_trigger))
    for key, value in source.reader_options.items():
        reader = reader.option(key, value)
    if source.security is not None:  # secrets read from the environment now, never kept in the config
        for key, value in source.security.client_options().items():
            reader = reader.option(key, value)
    return reader.load()


class FeedbackTopicError(RuntimeError):
    """The feedback topic is missing and could not be created; ``detail`` keeps the Kafka client's
    whole error (a refused login shows there, not in the first line)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message


def ensure_feedback_topic(spark: SparkSession, source: SourceConfig, timeout_s: float = 60.0) -> None:
    """Create ``source.feedback_topic`` when it does not exist yet (the broker's default partitions and
    replication), and wait until its partitions have leaders: the Kafka source fails a query whose
    subscribed topic has no partitions it can read offsets from. Runs on the driver, through the
    Kafka client Spark's connector ships, with the source's connection and security settings."""
    topic = source.feedback_topic
    if topic is None:
        return
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    props = jvm.java.util.Properties()
    props.setProperty("bootstrap.servers", source.bootstrap_servers)
    options = {**source.kafka_options, **(source.security.client_options() if source.security else {})}
    for key, value in options.items():
        if key.startswith("kafka.") and key != "kafka.bootstrap.servers":
            props.setProperty(key[len("kafka.") :], value)
    seconds = jvm.java.util.concurrent.TimeUnit.SECONDS
    admin = jvm.org.apache.kafka.clients.admin.Admin.create(props)
    try:
        if not admin.listTopics().names().get(int(timeout_s), seconds).contains(topic):
            empty = jvm.java.util.Optional.empty()
            new = jvm.org.apache.kafka.clients.admin.NewTopic(topic, empty, empty)
            try:
                admin.createTopics(jvm.java.util.Collections.singletonList(new)).all().get(int(timeout_s), seconds)
            except Exception as err:
                if "TopicExistsException" not in str(err):  # created meanwhile by someone else: fine
                    raise
        deadline = time.monotonic() + timeout_s
        while True:
            names = jvm.java.util.Collections.singletonList(topic)
            described = admin.describeTopics(names).allTopicNames().get(int(timeout_s), seconds).get(topic)
            partitions = list(described.partitions())
            if partitions and all(p.leader() is not None and not p.leader().isEmpty() for p in partitions):
                return
            if time.monotonic() > deadline:
                raise FeedbackTopicError(f"source.feedback_topic {topic!r}: its partitions have no leader")
            time.sleep(0.2)
    except FeedbackTopicError:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FeedbackTopicError(
            f"source.feedback_topic {topic!r} does not exist and could not be created ({first[:500]}); "
            "create it, or set source.feedback_topic: null to read no incident feedback",
            detail=str(err),
        ) from None
    finally:
        admin.close()


def _type_of(variant: Column) -> Column:
    """'STRING', 'BIGINT', 'DOUBLE', 'DECIMAL(3,1)', 'OBJECT<...>', 'VOID' (JSON null)... or SQL NULL if absent."""
    return F.schema_of_variant(variant)


def _json_type(variant_type: Column) -> Column:
    """A VARIANT type name in JSON's words: null, number, string, boolean, array, object."""
    base = F.split(variant_type, "[<(]")[0]
    named = F.lower(base)
    for spark_types, word in (
        (("VOID", "NULL"), "null"),
        ((*_NUMERIC_TYPES, "DECIMAL"), "number"),
        (("BOOLEAN",), "boolean"),
        (("STRING",), "string"),
        (("ARRAY",), "array"),
        (("OBJECT",), "object"),
    ):
        named = F.when(base.isin(*spark_types), F.lit(word)).otherwise(named)
    return named


def _parse_ts(ts_text: Column) -> Column:
    # RFC 3339 allows a lower-case "z"; Spark's parser only takes "Z"
    trimmed = F.trim(ts_text)
    return F.try_to_timestamp(F.when(trimmed.endswith("z"), F.regexp_replace(trimmed, "z$", "Z")).otherwise(trimmed))


def _value_checks(
    application: Column, num: Column, ts_text: Column, ts: Column, kafka_ts: Column, source: SourceConfig
) -> list[tuple[Column, str, Column]]:
    """Checks on well-typed fields, shared by the fast path and the diagnosis."""
    ts_ms = F.unix_millis(ts)
    checks = [
        (F.length(F.trim(application)) == 0, "empty_application", F.lit("application is empty")),
        (
            (F.length(application) > MAX_APPLICATION_LENGTH) | application.rlike(r"[\x00-\x1f\x7f]"),
            "invalid_application",
            F.lit(f"application must be at most {MAX_APPLICATION_LENGTH} characters, no control characters"),
        ),
        (
            num.isNull() | F.isnan(num) | (F.abs(num) == float("inf")),
            "value_not_finite",
            F.lit("value must be a finite number"),
        ),
        (
            ts.isNull(),
            "ts_unparseable",
            F.concat(F.lit("ts is not an ISO-8601 timestamp: "), F.substring(ts_text, 1, 64)),
        ),
    ]
    if source.require_timezone:
        checks.append(
            (
                ~F.trim(ts_text).rlike(_TZ_SUFFIX),
                "ts_no_timezone",
                F.lit("ts must carry a timezone (Z or an offset such as +02:00)"),
            )
        )
    checks += [
        (ts_ms < 0, "ts_out_of_range", F.lit("ts is before 1970-01-01T00:00:00Z")),
        (
            ts_ms > F.unix_millis(kafka_ts) + F.lit(source.max_future_millis),
            "ts_out_of_range",
            F.lit(f"ts is more than {source.max_future_millis} ms ahead of the Kafka record timestamp"),
        ),
    ]
    return checks


def _diagnosis(raw: Column, kafka_ts: Column, source: SourceConfig) -> tuple[Column, Column]:
    """(reason, detail) of a record that failed the fast path: the first failing check wins.

    Written as one expression over the raw bytes (no projected helper columns)
    so that Spark evaluates it only for the records that need it.
    """
    text = raw.cast("string")
    v = F.try_parse_json(text)
    t_msg = _type_of(v)
    field_types = {name: _type_of(F.variant_get(v, f"$.{name}", "variant")) for name in ("application", "value", "ts")}
    is_number = field_types["value"].isin(*_NUMERIC_TYPES) | field_types["value"].startswith("DECIMAL")
    checks: list[tuple[Column, str, Column]] = [
        (raw.isNull(), "null_value", F.lit("record has no value (tombstone)")),
        (~F.is_valid_utf8(text), "invalid_utf8", F.lit("value is not valid UTF-8")),
        (v.isNull(), "invalid_json", F.lit("value is not valid JSON")),
        (
            ~t_msg.startswith("OBJECT"),
            "not_an_object",
            F.concat(F.lit("value must be a JSON object, got "), _json_type(t_msg)),
        ),
    ]
    for name, expected, ok in (
        ("application", "a string", field_types["application"] == "STRING"),
        ("value", "a number", is_number),
        ("ts", "an ISO-8601 string", field_types["ts"] == "STRING"),
    ):
        type_col = field_types[name]
        checks.append((type_col.isNull(), "missing_field", F.lit(f"{name} is missing")))
        checks.append((type_col.isin("VOID", "NULL"), "null_field", F.lit(f"{name} is null")))
        checks.append(
            (~ok, "wrong_type", F.concat(F.lit(f"{name} must be {expected}, got "), _json_type(type_col)))
        )
    ts_text = F.try_variant_get(v, "$.ts", "string")
    checks += _value_checks(
        F.try_variant_get(v, "$.application", "string"),
        F.try_variant_get(v, "$.value", "double"),
        ts_text,
        _parse_ts(ts_text),
        kafka_ts,
        source,
    )
    reason = F.lit("unknown").cast("string")
    detail = F.lit("the record failed validation").cast("string")
    for condition, code, text_col in reversed(checks):  # CASE WHEN, first failing check wins
        reason = F.when(F.coalesce(condition, F.lit(False)), F.lit(code)).otherwise(reason)
        detail = F.when(F.coalesce(condition, F.lit(False)), text_col).otherwise(detail)
    return reason, detail


def parse_messages(kafka_df: DataFrame, source: SourceConfig) -> DataFrame:
    """Validate every record; returns :data:`VALIDATED_COLUMNS` (see the module docstring).

    Fast path: ``from_json`` with a typed schema plus cheap checks accepts a
    well-formed record in a few microseconds. ``from_json`` is lenient about
    types (it turns ``"application": 5`` into "5"), so the fast path also
    requires the raw text to hold ``application`` and ``ts`` as JSON strings.
    Records that fail it -- rare in a healthy stream -- are diagnosed with
    Spark's strict VARIANT parser to find the exact reason.
    """
    text = F.col("value").cast("string")
    df = kafka_df.select(
        F.col("key").alias("kafka_key"),
        F.col("value").alias("raw"),
        F.col("topic").alias("src_topic"),
        F.col("partition").alias("src_partition"),
        F.col("offset").alias("src_offset"),
        F.col("timestamp").alias("kafka_ts"),
        F.from_json(text, _FAST_SCHEMA).alias("j"),
        (text.rlike(_APPLICATION_IS_STRING) & text.rlike(_TS_IS_STRING)).alias("strings_ok"),
    )
    df = df.select("*", _parse_ts(F.col("j.ts")).alias("ts"))
    application, num = F.col("j.application"), F.col("j.value")
    fast_ok = F.col("raw").isNotNull() & F.col("strings_ok") & application.isNotNull()
    for condition, _, _ in _value_checks(application, num, F.col("j.ts"), F.col("ts"), F.col("kafka_ts"), source):
        fast_ok = fast_ok & ~F.coalesce(condition, F.lit(True))
    reason, detail = _diagnosis(F.col("raw"), F.col("kafka_ts"), source)
    df = df.select(
        "*",
        F.when(fast_ok, F.lit(None).cast("string")).otherwise(reason).alias("reason"),
        F.when(fast_ok, F.lit(None).cast("string")).otherwise(detail).alias("detail"),
    )
    valid = F.col("reason").isNull()
    columns = {
        "gkey": F.when(valid, application).otherwise(F.lit(INVALID_KEY)),
        "ts_ms": F.when(valid, F.unix_millis(F.col("ts"))),
        "value": F.when(valid, num),
        "reason": F.col("reason"),
        "detail": F.col("detail"),
        # the original bytes ride along only for rejects: shipping every valid
        # record's bytes through the shuffle would double what the operator reads
        "raw": F.when(~valid, F.col("raw")),
        "kafka_key": F.when(~valid, F.col("kafka_key")),
        "src_topic": F.col("src_topic"),
        "src_partition": F.col("src_partition"),
        "src_offset": F.col("src_offset"),
        "event_time": F.when(valid, F.col("ts")),
    }
    if source.feedback_topic is not None:
        is_feedback = F.col("src_topic") == F.lit(source.feedback_topic)
        feedback = _feedback_columns(F.col("raw"), F.col("kafka_key"), F.col("kafka_ts"))
        columns = {name: F.when(is_feedback, feedback.get(name, column)).otherwise(column)
                   for name, column in columns.items()}
    return df.select(*[column.alias(name) for name, column in columns.items()])


_FEEDBACK_SCHEMA = "application STRING, incident_id STRING, label STRING, ts STRING"


def _feedback_columns(raw: Column, kafka_key: Column, kafka_ts: Column) -> dict[str, Column]:
    """The event columns of a feedback record (see the module docstring); null event time."""
    j = F.from_json(raw.cast("string"), _FEEDBACK_SCHEMA)
    application, incident, label, ts_text = (j[name] for name in ("application", "incident_id", "label", "ts"))
    ts = _parse_ts(ts_text)
    checks = [
        (j.isNull(), "invalid_feedback", F.lit("feedback must be a JSON object")),
        (F.coalesce(F.length(F.trim(application)), F.lit(0)) == 0, "invalid_feedback",
         F.lit("feedback.application is missing or empty")),
        (~F.coalesce(incident.rlike("^[0-9a-f]{32}$"), F.lit(False)), "invalid_feedback",
         F.lit("feedback.incident_id must be 32 lower-case hex characters")),
        (~F.coalesce(label.isin(*LABELS), F.lit(False)), "invalid_feedback",
         F.lit(f"feedback.label must be one of {', '.join(LABELS)}")),
        (ts_text.isNotNull() & ts.isNull(), "invalid_feedback", F.lit("feedback.ts is not an ISO-8601 timestamp")),
    ]
    reason = F.lit(None).cast("string")
    detail = F.lit(None).cast("string")
    for condition, reason_code, text in reversed(checks):
        reason = F.when(condition, F.lit(reason_code)).otherwise(reason)
        detail = F.when(condition, text).otherwise(detail)
    ok = reason.isNull()
    code = F.lit(None).cast("double")
    for k, name in enumerate(LABELS):
        code = F.when(label == name, F.lit(float(k))).otherwise(code)
    return {
        "gkey": F.when(ok, application).otherwise(F.lit(INVALID_KEY)),
        "ts_ms": F.when(ok, F.coalesce(F.unix_millis(ts), F.unix_millis(kafka_ts))),
        "value": F.when(ok, code),
        "reason": reason,
        "detail": F.when(ok, incident).otherwise(detail),
        "raw": F.when(~ok, raw),
        "kafka_key": F.when(~ok, kafka_key),
        "event_time": F.lit(None).cast("timestamp"),
    }


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
    return marked.select(*[c for c in VALIDATED_COLUMNS if c != "event_time"])
