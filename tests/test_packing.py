"""Packing (jobs/packing.py): every event survives pack -> unpack, with its source position."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from jobs import packing
from jobs.source import INVALID_KEY

EVENT_TYPES = {
    "bucket": pa.int32(),
    "gkey": pa.string(),
    "ts_ms": pa.int64(),
    "value": pa.float64(),
    "reason": pa.string(),
    "detail": pa.string(),
    "raw": pa.binary(),
    "kafka_key": pa.binary(),
    "src_topic": pa.string(),
    "src_partition": pa.int32(),
    "src_offset": pa.int64(),
}


def bucket_of(gkey: str) -> int:
    """Any fixed mapping will do here (the job uses Spark's xxhash64): 3 buckets, rejects apart."""
    return packing.REJECT_BUCKET if gkey == INVALID_KEY else sum(gkey.encode()) % 3


def events(rows: list[dict]) -> pa.Table:
    rows = [{**r, "bucket": bucket_of(r["gkey"])} for r in rows]
    return pa.table({c: pa.array([r.get(c) for r in rows], t) for c, t in EVENT_TYPES.items()})


def unpacked_by_bucket(table: pa.Table, batch_rows: int) -> dict[int, dict[str, list]]:
    packed = pa.Table.from_batches(
        list(packing.pack_batches(iter(table.to_batches(max_chunksize=batch_rows)))),
        schema=packing.ARROW_SCHEMA,
    ).to_pandas()
    out: dict[int, dict[str, list]] = {}
    for key, frame in packed.groupby("bucket", sort=True):
        flat = packing.unpack(frame.reset_index(drop=True))
        order = np.lexsort((flat["src_offset"], flat["src_partition"], flat["src_topic"].astype(str)))
        out[key] = {name: column[order].tolist() for name, column in flat.items()}
    return out


def test_every_event_and_reject_comes_back_once_with_its_source(monkeypatch):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(3000):
        topic, partition = ("a", 0) if i % 3 else ("b", 1)
        if i % 97 == 0:
            rows.append(
                {
                    "gkey": INVALID_KEY,
                    "reason": "invalid_json",
                    "detail": f"bad {i}",
                    "raw": b"{x" + bytes([i % 256]),
                    "kafka_key": None if i % 2 else b"k",
                    "src_topic": topic,
                    "src_partition": partition,
                    "src_offset": i,
                }
            )
        else:
            rows.append(
                {
                    "gkey": f"app-{rng.integers(0, 40)}",
                    "ts_ms": int(rng.integers(0, 10**9)),
                    "value": float(rng.normal()),
                    "src_topic": topic,
                    "src_partition": partition,
                    "src_offset": i,
                    # incident feedback carries its incident id through valid buckets
                    "detail": "f" * 32 if i % 11 == 0 else None,
                }
            )
    monkeypatch.setattr(packing, "CHUNK_ROWS", 700)  # several chunks per task, uneven batches
    got = unpacked_by_bucket(events(rows), batch_rows=250)
    assert set(got) == {bucket_of(r["gkey"]) for r in rows}
    for key, columns in got.items():
        mine = sorted(
            (r for r in rows if bucket_of(r["gkey"]) == key), key=lambda r: (r["src_topic"], r["src_offset"])
        )
        names = packing.REJECT_LISTS if key == packing.REJECT_BUCKET else packing.VALID_LISTS + packing.BOTH_LISTS
        for r in mine:
            r["application"] = r["gkey"]
        for name in (*names, "src_topic", "src_partition", "src_offset"):
            assert columns[name] == [r[name] for r in mine], (key, name)
        assert set(columns) == {*names, "src_topic", "src_partition", "src_offset"}


def test_a_chunk_packs_each_bucket_into_one_row_with_null_lists_for_the_other_kind():
    table = events(
        [
            {"gkey": "a", "ts_ms": 1, "value": 1.0, "src_topic": "t", "src_partition": 0, "src_offset": 5},
            {
                "gkey": INVALID_KEY,
                "reason": "r",
                "detail": "d",
                "raw": b"x",
                "src_topic": "t",
                "src_partition": 0,
                "src_offset": 6,
            },
            {"gkey": "a", "ts_ms": 2, "value": 2.0, "src_topic": "t", "src_partition": 0, "src_offset": 7},
        ]
    )
    packed = pa.Table.from_batches(list(packing.pack_batches(iter(table.to_batches())))).to_pylist()
    by_key = {row["bucket"]: row for row in packed}
    assert len(packed) == 2
    a, rejected = by_key[bucket_of("a")], by_key[packing.REJECT_BUCKET]
    assert a["src_offset"] == [5, 7] and a["application"] == ["a", "a"] and a["reason"] is None
    assert rejected["ts_ms"] is None and rejected["application"] is None and rejected["raw"] == [b"x"]
