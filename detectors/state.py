"""The versioned binary state codec: one self-describing blob per stored state.

Detectors serialise what they have learned with it (``Detector.to_state``),
and so do the job's stateful operator for a bucket's whole state
(jobs/stateful_step.py) and the incident layer; Spark keeps the bytes. A blob
is tagged with the name of what wrote it, a version and a fingerprint of its
parameters, so a reader refuses a blob of something else, of a newer version
or of other parameters instead of misreading it. Fields are typed (float64,
int64, string, numpy array, raw bytes) and come back as written.

Layout: ``b"ADS1"`` | u32 header length | header JSON | fields. Each field:
u16 name length | name | u8 kind | payload; kind 0 = float64, 1 = int64,
2 = utf-8 string, 3 = numpy array (dtype str, ndim, shape, raw bytes),
4 = raw bytes (u32 length, payload; e.g. a wrapped detector's own state).

:class:`FixedStateLayout` maps the blobs of one writer and parameters whose
fields all have a fixed width, so that many blobs decode and encode as one
matrix of bytes (the detectors' vectorised ``update_many`` paths).

Errors are :class:`StateError` and name what the blob was read as (``what``):
"detector 'ema'", "bucket state", ...

>>> blob = pack_state("demo", 1, {"k": 2}, {"n": 3, "xs": np.arange(2.0)})
>>> header, fields = unpack_state(blob, "demo state")
>>> header["name"], header["version"], fields["n"], fields["xs"].tolist()
('demo', 1, 3, [0.0, 1.0])
>>> unpack_state(b"junk", "bucket state")
Traceback (most recent call last):
...
detectors.state.StateError: bucket state: not a state blob (bad magic); was it written by another program?
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = ["FixedStateLayout", "StateError", "pack_state", "params_fingerprint", "unpack_state"]


class StateError(ValueError):
    """A stored state cannot be loaded: not a state blob, corrupt, or another writer, version or parameters."""


class FixedStateLayout:
    """Where each value sits in the state blobs of one detector class and parameters whose fields all
    have a fixed width (numbers, arrays of a fixed shape): many blobs then decode and encode as one
    matrix of bytes, for vectorised :meth:`Detector.update_many` paths.

    Built from one blob (usually a fresh detector's ``to_state()``); a blob of
    another length, or whose bytes outside the values differ (another
    detector, version, parameters or field set), does not match, and
    :meth:`decode` returns None: the caller then takes the per-series path,
    which reads or refuses it as ``from_state`` does.
    """

    def __init__(self, template: bytes, fields: dict[str, tuple[int, np.dtype, tuple[int, ...]]]) -> None:
        self.template = np.frombuffer(template, dtype=np.uint8)
        self.fields = fields
        fixed = np.ones(len(template), dtype=bool)
        for offset, dtype, shape in fields.values():
            fixed[offset : offset + dtype.itemsize * math.prod(shape)] = False
        self._fixed = np.flatnonzero(fixed)

    @staticmethod
    def of(blob: bytes) -> FixedStateLayout | None:
        """The layout of ``blob``, or None if a field has a variable width (a string or bytes)."""
        mv = memoryview(blob)
        (hlen,) = struct.unpack_from("<I", mv, 4)
        fields: dict[str, tuple[int, np.dtype, tuple[int, ...]]] = {}
        for key, kind, start, _, dtype, shape in _field_spans(mv, 8 + hlen):
            if kind in (0, 1):
                fields[key] = (start, np.dtype("<f8" if kind == 0 else "<i8"), ())
            elif kind == 3 and dtype is not None:
                fields[key] = (start, dtype, shape)
            else:
                return None
        return FixedStateLayout(bytes(blob), fields)

    def decode(self, blobs: list[bytes]) -> dict[str, np.ndarray] | None:
        """Each field's values over ``blobs`` (first axis: the blob), or None if one does not match."""
        width = len(self.template)
        if any(len(b) != width for b in blobs):
            return None
        matrix = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), width)
        if not (matrix[:, self._fixed] == self.template[self._fixed]).all():
            return None
        out = {}
        for key, (offset, dtype, shape) in self.fields.items():
            raw = np.ascontiguousarray(matrix[:, offset : offset + dtype.itemsize * math.prod(shape)])
            out[key] = raw.view(dtype).reshape(len(blobs), *shape).astype(dtype.newbyteorder("="))
        return out

    def encode(self, columns: Mapping[str, np.ndarray], n: int) -> list[bytes]:
        """``n`` blobs with these fields' values (first axis: the blob); the other bytes from the template."""
        width = len(self.template)
        matrix = np.tile(self.template, (n, 1))
        for key, (offset, dtype, shape) in self.fields.items():
            size = dtype.itemsize * math.prod(shape)
            values = np.ascontiguousarray(np.asarray(columns[key]).astype(dtype).reshape(n, -1))
            matrix[:, offset : offset + size] = values.view(np.uint8).reshape(n, size)
        data = matrix.tobytes()
        return [data[i * width : (i + 1) * width] for i in range(n)]


# -- the blob -------------------------------------------------------------------------
_MAGIC = b"ADS1"


def params_fingerprint(config: Mapping[str, Any]) -> str:
    # every to_state/from_state asks for it, once per application and micro-batch
    # in the streaming job: cache by the (hashable) items when they allow it
    try:
        return _cached_fingerprint(tuple(sorted(config.items())))
    except TypeError:  # an unhashable value (a list): compute it
        return _fingerprint(config)


def _fingerprint(config: Mapping[str, Any]) -> str:
    canonical = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(canonical.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=256)
def _cached_fingerprint(items: tuple[tuple[str, Any], ...]) -> str:
    return _fingerprint(dict(items))


def pack_state(name: str, version: int, config: Mapping[str, Any], fields: Mapping[str, Any]) -> bytes:
    header = json.dumps(
        {"name": name, "version": version, "params": params_fingerprint(config)},
        separators=(",", ":"),
    ).encode()
    out = [_MAGIC, struct.pack("<I", len(header)), header]
    for key, value in fields.items():
        kb = key.encode()
        out.append(struct.pack("<H", len(kb)) + kb)
        if isinstance(value, (bool, np.bool_, int, np.integer)):
            out.append(b"\x01" + struct.pack("<q", int(value)))
        elif isinstance(value, (float, np.floating)):
            out.append(b"\x00" + struct.pack("<d", float(value)))
        elif isinstance(value, str):
            sb = value.encode()
            out.append(b"\x02" + struct.pack("<I", len(sb)) + sb)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            out.append(b"\x04" + struct.pack("<I", len(raw)) + raw)
        elif isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            dt = arr.dtype.str.encode()
            out.append(b"\x03" + struct.pack("<B", len(dt)) + dt + struct.pack("<B", arr.ndim))
            out.append(struct.pack(f"<{arr.ndim}q", *arr.shape) + arr.tobytes())
        else:
            raise TypeError(f"state field {key!r} has unsupported type {type(value).__name__}")
    return b"".join(out)


def _field_spans(
    mv: memoryview, pos: int
) -> Iterator[tuple[str, int, int, int, np.dtype | None, tuple[int, ...]]]:
    """The fields of a state blob from ``pos`` (after its header): key, kind, where the value's bytes
    start and end, and for arrays (kind 3) their dtype and shape. What :func:`unpack_state` decodes
    and :meth:`FixedStateLayout.of` maps."""
    while pos < len(mv):
        (klen,) = struct.unpack_from("<H", mv, pos)
        key = bytes(mv[pos + 2 : pos + 2 + klen]).decode()
        pos += 2 + klen
        kind = mv[pos]
        pos += 1
        dtype: np.dtype | None = None
        shape: tuple[int, ...] = ()
        if kind in (0, 1):  # float64, int64
            start, end = pos, pos + 8
        elif kind in (2, 4):  # str, bytes: a 4-byte length first
            (size,) = struct.unpack_from("<I", mv, pos)
            start, end = pos + 4, pos + 4 + size
        elif kind == 3:  # array: dtype string, ndim, shape, then the data
            dlen = mv[pos]
            dtype = np.dtype(bytes(mv[pos + 1 : pos + 1 + dlen]).decode())
            pos += 1 + dlen
            ndim = mv[pos]
            shape = tuple(struct.unpack_from(f"<{ndim}q", mv, pos + 1))
            start = pos + 1 + 8 * ndim
            end = start + math.prod(shape) * dtype.itemsize
        else:
            raise ValueError(f"unknown field kind {kind}")
        yield key, kind, start, end, dtype, shape
        pos = end


def unpack_state(blob: bytes, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header (name, version, params fingerprint) and fields of a blob written by :func:`pack_state`.

    ``what`` names what the blob is read as, for the errors (e.g. ``"detector 'ema'"``).
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)) or bytes(blob[:4]) != _MAGIC:
        raise StateError(f"{what}: not a state blob (bad magic); was it written by another program?")
    mv = memoryview(bytes(blob))
    try:
        (hlen,) = struct.unpack_from("<I", mv, 4)
        header = json.loads(bytes(mv[8 : 8 + hlen]))
        fields: dict[str, Any] = {}
        for key, kind, start, end, dtype, shape in _field_spans(mv, 8 + hlen):
            if end > len(mv):
                raise ValueError(f"field {key!r} is truncated")
            if kind == 0:
                (fields[key],) = struct.unpack_from("<d", mv, start)
            elif kind == 1:
                (fields[key],) = struct.unpack_from("<q", mv, start)
            elif kind == 2:
                fields[key] = bytes(mv[start:end]).decode()
            elif kind == 3:
                fields[key] = np.frombuffer(mv[start:end], dtype=dtype).reshape(shape).copy()
            else:
                fields[key] = bytes(mv[start:end])
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, ValueError, IndexError, TypeError) as err:
        raise StateError(f"{what}: corrupt state blob: {err}") from err
    return header, fields
