"""The additive ``bytes`` field kind of detectors.base.pack_state / unpack_state."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.base import StateError, pack_state, unpack_state


def test_bytes_fields_round_trip_next_to_other_kinds() -> None:
    fields = {"inner": b"\x00ADS1\xff" * 3, "empty": b"", "x": 1.5, "n": 3, "a": np.arange(4.0)}
    header, out = unpack_state(pack_state("demo", 1, {"p": 1}, fields))
    assert header["name"] == "demo"
    assert out["inner"] == fields["inner"] and out["empty"] == b""
    assert isinstance(out["inner"], bytes)
    assert (out["x"], out["n"]) == (1.5, 3) and np.array_equal(out["a"], fields["a"])


def test_truncated_state_is_a_state_error() -> None:
    blob = pack_state("demo", 1, {}, {"inner": b"abcdef" * 10})
    for cut in range(len(blob) - 60, len(blob)):
        with pytest.raises(StateError):
            unpack_state(blob[:cut])
