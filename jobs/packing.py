"""Packing stage: event rows -> one row per (bucket of applications, Kafka partition, chunk).

Every row that crosses from the JVM into the Python stateful operator pays for
itself several times: in the shuffle, in the Arrow writer, in pandas. Most of
that cost is per row, not per value. So before the shuffle, a stateless Arrow
function (``mapInArrow``, no pandas, no per-event Python) packs the events of
each bucket of applications (``pmod(xxhash64(application), buckets)``, computed
in the JVM) that one task reads into a single row of arrays::

    bucket | src_topic | src_partition | application[] | src_offset[] | ts_ms[] | value[] | reason[] ...

The operator (jobs/stateful_operator.py) groups by bucket and unpacks them with ``np.concatenate``. Nothing
is aggregated or dropped here: every event, with its source position, still
reaches the operator, which alone knows the watermark and decides what is late.
That keeps late events exact and results bit-identical to processing the rows
one by one; the operator sorts a bucket's events by (application, ts, topic,
partition, offset) anyway, so the packing order does not matter.

Valid events fill ``application``, ``ts_ms``, ``value`` and ``detail`` (null
but for incident feedback, where it holds the incident id); rejects (``gkey`` =
:data:`jobs.source.INVALID_KEY`, bucket :data:`REJECT_BUCKET`) fill
``reason``, ``detail``, ``raw`` and ``kafka_key``; the other lists are null.

>>> import pyarrow as pa
>>> events = pa.table({"bucket": pa.array([0, 1, 0], pa.int32()), "gkey": ["a", "b", "a"],
...     "ts_ms": [1, 2, 3], "value": [1.0, 2.0, 3.0],
...     "reason": pa.nulls(3, pa.string()), "detail": pa.nulls(3, pa.string()),
...     "raw": pa.nulls(3, pa.binary()), "kafka_key": pa.nulls(3, pa.binary()),
...     "src_topic": ["t"] * 3, "src_partition": pa.array([0] * 3, pa.int32()), "src_offset": [10, 11, 12]})
>>> packed = pa.Table.from_batches(list(pack_batches(iter(events.to_batches()))))
>>> packed.select(["bucket", "application", "src_offset", "value"]).to_pylist()  # doctest: +NORMALIZE_WHITESPACE
[{'bucket': 0, 'application': ['a', 'a'], 'src_offset': [10, 12], 'value': [1.0, 3.0]},
 {'bucket': 1, 'application': ['b'], 'src_offset': [11], 'value': [2.0]}]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from jobs.source import INVALID_KEY

if TYPE_CHECKING:  # pandas is heavy to import, and this module runs in mapInArrow workers
    import pandas as pd

# Rows packed at a time: big enough that a busy application gets hundreds of
# events per packed row, small enough to keep a task's memory flat.
CHUNK_ROWS = 200_000
# the bucket of records that failed validation in the source stage
REJECT_BUCKET = -1
VALID_LISTS = ("application", "ts_ms", "value")
REJECT_LISTS = ("reason", "detail", "raw", "kafka_key")
BOTH_LISTS = ("detail",)  # valid events: incident feedback's incident id (jobs/source.py)

# the per-event columns, with their element types; everything else is one value per packed row
_LIST_TYPES = {
    "application": StringType(),
    "src_offset": LongType(),
    "ts_ms": LongType(),
    "value": DoubleType(),
    "reason": StringType(),
    "detail": StringType(),
    "raw": BinaryType(),
    "kafka_key": BinaryType(),
}
PACKED_SCHEMA = StructType(
    [
        StructField("bucket", IntegerType(), False),
        StructField("src_topic", StringType(), True),
        StructField("src_partition", IntegerType(), True),
        *[StructField(name, ArrayType(element), True) for name, element in _LIST_TYPES.items()],
    ]
)
# the same schema as mapInArrow expects the batches, from Spark's own mapping
ARROW_SCHEMA = to_arrow_schema(PACKED_SCHEMA)


def pack(events: DataFrame, buckets: int) -> DataFrame:
    """The events of jobs.source (watermarked), packed per bucket of applications and task."""
    bucket = F.when(F.col("gkey") == INVALID_KEY, F.lit(REJECT_BUCKET)).otherwise(
        F.pmod(F.xxhash64("gkey"), F.lit(buckets))
    )
    return events.select("*", bucket.cast("int").alias("bucket")).mapInArrow(pack_batches, PACKED_SCHEMA)


def pack_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow function: a task's event batches in, packed batches out."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        rows += batch.num_rows
        if rows >= CHUNK_ROWS:
            yield from _pack_chunk(pa.Table.from_batches(pending))
            pending, rows = [], 0
    if pending:
        yield from _pack_chunk(pa.Table.from_batches(pending))


def _pack_chunk(table: pa.Table) -> Iterator[pa.RecordBatch]:
    # A Kafka task reads one topic-partition, so this loop runs once; it is here
    # so that packing stays correct for any other source.
    sources = table.select(["src_topic", "src_partition"]).group_by(["src_topic", "src_partition"]).aggregate([])
    for topic, partition in zip(
        sources.column("src_topic").to_pylist(), sources.column("src_partition").to_pylist(), strict=True
    ):
        if sources.num_rows == 1:
            part = table
        else:
            same = pc.and_(
                _equal_or_both_null(table.column("src_topic"), topic),
                _equal_or_both_null(table.column("src_partition"), partition),
            )
            part = table.filter(same)
        yield _pack_source(part.combine_chunks(), topic, partition)


def _equal_or_both_null(column: pa.ChunkedArray, value: object) -> pa.ChunkedArray:
    return pc.is_null(column) if value is None else pc.fill_null(pc.equal(column, value), False)


def _pack_source(table: pa.Table, topic: str | None, partition: int | None) -> pa.RecordBatch:
    buckets = table.column("bucket").to_numpy()
    # stable: within a bucket, events keep their read (offset) order
    order = np.argsort(buckets, kind="stable")
    row_buckets, counts = np.unique(buckets, return_counts=True)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    sorted_table = table.rename_columns(["application" if c == "gkey" else c for c in table.column_names]).take(
        pa.array(order)
    )
    is_reject = row_buckets == REJECT_BUCKET
    n = len(row_buckets)
    columns = {
        "bucket": pa.array(row_buckets.astype(np.int32), pa.int32()),
        "src_topic": pa.array([topic] * n, pa.string()),
        "src_partition": pa.array([partition] * n, pa.int32()),
    }
    for name in _LIST_TYPES:
        values = sorted_table.column(name).combine_chunks().cast(ARROW_SCHEMA.field(name).type.value_type)
        if name in VALID_LISTS:
            mask = pa.array(is_reject)
        elif name in REJECT_LISTS and name not in BOTH_LISTS:
            mask = pa.array(~is_reject)
        else:
            mask = None
        columns[name] = pa.ListArray.from_arrays(offsets, values, mask=mask)
    return pa.RecordBatch.from_pydict(columns, schema=ARROW_SCHEMA)


def unpack(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """A bucket's packed rows (pandas, as the operator receives them) -> flat numpy columns.

    Buckets of valid events get ``application``, ``ts_ms``, ``value``,
    ``src_topic``, ``src_partition``, ``src_offset``; the reject bucket gets
    ``reason``, ``detail``, ``raw``, ``kafka_key`` and the source columns.
    """
    offsets = [np.asarray(cell, dtype=np.int64) for cell in frame["src_offset"]]
    lengths = np.array([len(cell) for cell in offsets], dtype=np.int64)
    flat: dict[str, np.ndarray] = {
        "src_offset": np.concatenate(offsets) if offsets else np.zeros(0, dtype=np.int64),
        "src_topic": np.repeat(frame["src_topic"].to_numpy(dtype=object), lengths),
        "src_partition": np.repeat(frame["src_partition"].to_numpy(), lengths),
    }
    first = frame.iloc[0]
    names = REJECT_LISTS if first["bucket"] == REJECT_BUCKET else VALID_LISTS + BOTH_LISTS
    for name in names:
        cells = frame[name].to_numpy()
        dtype = ARROW_SCHEMA.field(name).type.value_type.to_pandas_dtype()  # object for strings and bytes
        flat[name] = np.concatenate([np.asarray(c, dtype=dtype) for c in cells])
    return flat
