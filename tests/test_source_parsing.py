"""Validation of Kafka records into events (jobs/source.py), on static DataFrames."""

from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality
from pyspark.sql import Row
from pyspark.sql import types as T

from jobs.source import INVALID_KEY, parse_messages
from tests.stream_harness import stream_config

KAFKA_SCHEMA = T.StructType(
    [
        T.StructField("key", T.BinaryType()),
        T.StructField("value", T.BinaryType()),
        T.StructField("topic", T.StringType()),
        T.StructField("partition", T.IntegerType()),
        T.StructField("offset", T.LongType()),
        T.StructField("timestamp", T.TimestampType()),
    ]
)
KAFKA_TS = dt.datetime(2024, 1, 1, 12, 0, 0)


def records(spark, values):
    rows = [
        (None, v if v is None or isinstance(v, bytes) else v.encode(), "metrics", 0, i, KAFKA_TS)
        for i, v in enumerate(values)
    ]
    return spark.createDataFrame(rows, KAFKA_SCHEMA)


def parse(spark, values, **source):
    return parse_messages(records(spark, values), stream_config(**source).source)


def test_valid_messages_become_events(spark):
    df = parse(
        spark,
        [
            '{"application": "web", "value": 1.5, "ts": "2024-01-01T00:00:00Z"}',
            '{"application": "db", "value": 7, "ts": "2024-01-01T01:00:00.250+01:00", "extra": [1]}',
            '{"application": "db", "value": -2e3, "ts": "2024-01-01T00:00:01.5z"}',
        ],
    )
    expected = spark.createDataFrame(
        [
            Row(gkey="web", ts_ms=1704067200000, value=1.5, reason=None, detail=None),
            Row(gkey="db", ts_ms=1704067200250, value=7.0, reason=None, detail=None),
            Row(gkey="db", ts_ms=1704067201500, value=-2000.0, reason=None, detail=None),
        ],
        "gkey string, ts_ms long, value double, reason string, detail string",
    )
    assert_df_equality(
        df.select("gkey", "ts_ms", "value", "reason", "detail"),
        expected,
        ignore_nullable=True,
    )


BAD = [
    (None, "null_value", "record has no value (tombstone)"),
    (b"\xff\xfe{}", "invalid_utf8", "value is not valid UTF-8"),
    ('{"application": "a", "value": 1', "invalid_json", "value is not valid JSON"),
    (
        '{"application": "a", "value": NaN, "ts": "2024-01-01T00:00:00Z"}',
        "invalid_json",
        "value is not valid JSON",
    ),
    ("[1, 2]", "not_an_object", "value must be a JSON object, got array"),
    ('"text"', "not_an_object", "value must be a JSON object, got string"),
    ("null", "not_an_object", "value must be a JSON object, got null"),
    ("12.5", "not_an_object", "value must be a JSON object, got number"),
    ('{"value": 1, "ts": "2024-01-01T00:00:00Z"}', "missing_field", "application is missing"),
    ('{"application": null, "value": 1, "ts": "2024-01-01T00:00:00Z"}', "null_field", "application is null"),
    (
        '{"application": 5, "value": 1, "ts": "2024-01-01T00:00:00Z"}',
        "wrong_type",
        "application must be a string, got number",
    ),
    ('{"application": "a", "ts": "2024-01-01T00:00:00Z"}', "missing_field", "value is missing"),
    (
        '{"application": "a", "value": "1.5", "ts": "2024-01-01T00:00:00Z"}',
        "wrong_type",
        "value must be a number, got string",
    ),
    (
        '{"application": "a", "value": true, "ts": "2024-01-01T00:00:00Z"}',
        "wrong_type",
        "value must be a number, got boolean",
    ),
    (
        '{"application": "a", "value": {"x": 1}, "ts": "2024-01-01T00:00:00Z"}',
        "wrong_type",
        "value must be a number, got object",
    ),
    ('{"application": "a", "value": 1}', "missing_field", "ts is missing"),
    (
        '{"application": "a", "value": 1, "ts": 1704067200}',
        "wrong_type",
        "ts must be an ISO-8601 string, got number",
    ),
    (
        '{"application": ["a"], "value": 1, "ts": "2024-01-01T00:00:00Z"}',
        "wrong_type",
        "application must be a string, got array",
    ),
    (
        '{"application": "a", "value": 1.5e3, "ts": 1.5}',
        "wrong_type",
        "ts must be an ISO-8601 string, got number",
    ),
    (
        '{"application": "", "value": 1, "ts": "2024-01-01T00:00:00Z"}',
        "empty_application",
        "application is empty",
    ),
    (
        '{"application": "  ", "value": 1, "ts": "2024-01-01T00:00:00Z"}',
        "empty_application",
        "application is empty",
    ),
    ('{"application": "a\\u0000b", "value": 1, "ts": "2024-01-01T00:00:00Z"}', "invalid_application", None),
    (
        '{"application": "a", "value": 1e999, "ts": "2024-01-01T00:00:00Z"}',
        "value_not_finite",
        "value must be a finite number",
    ),
    (
        '{"application": "a", "value": 1, "ts": "yesterday"}',
        "ts_unparseable",
        "ts is not an ISO-8601 timestamp: yesterday",
    ),
    ('{"application": "a", "value": 1, "ts": "2024-01-01T00:00:00"}', "ts_no_timezone", None),
    (
        '{"application": "a", "value": 1, "ts": "1969-12-31T23:59:59Z"}',
        "ts_out_of_range",
        "ts is before 1970-01-01T00:00:00Z",
    ),
    ('{"application": "a", "value": 1, "ts": "2030-01-01T00:00:00Z"}', "ts_out_of_range", None),
]


def test_every_bad_message_gets_its_reason_and_keeps_its_bytes(spark):
    values = [raw for raw, _, _ in BAD]
    rows = parse(spark, values).orderBy("src_offset").collect()
    assert len(rows) == len(BAD)
    for row, (raw, reason, detail) in zip(rows, BAD, strict=True):
        assert (row.reason, row.gkey) == (reason, INVALID_KEY), raw
        if detail is not None:
            assert row.detail == detail, raw
        assert row.detail, raw
        expected_raw = raw if raw is None or isinstance(raw, bytes) else raw.encode()
        assert (None if row.raw is None else bytes(row.raw)) == expected_raw
        assert (row.src_topic, row.src_partition) == ("metrics", 0)
        assert row.ts_ms is None and row.value is None


def test_large_finite_values_and_long_names_are_accepted(spark):
    long_name = "x" * 512
    rows = (
        parse(
            spark,
            [
                '{"application": "a", "value": 1e308, "ts": "2024-01-01T00:00:00Z"}',
                '{"application": "a", "value": -1e308, "ts": "2024-01-01T00:00:00Z"}',
                f'{{"application": "{long_name}", "value": 0, "ts": "2024-01-01T00:00:00Z"}}',
                f'{{"application": "{long_name}y", "value": 0, "ts": "2024-01-01T00:00:00Z"}}',
            ],
        )
        .orderBy("src_offset")
        .collect()
    )
    assert [r.value for r in rows[:3]] == [1e308, -1e308, 0.0]
    assert [r.reason for r in rows] == [None, None, None, "invalid_application"]


@pytest.mark.parametrize("require_timezone, reason", [(True, "ts_no_timezone"), (False, None)])
def test_timezone_requirement_is_configurable(spark, require_timezone, reason):
    rows = parse(
        spark,
        ['{"application": "a", "value": 1, "ts": "2024-01-01T00:00:00"}'],
        require_timezone=require_timezone,
    ).collect()
    assert rows[0].reason == reason
    if reason is None:  # naive timestamps are read as UTC (the session time zone)
        assert rows[0].ts_ms == 1704067200000
