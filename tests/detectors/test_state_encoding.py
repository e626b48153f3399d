"""The state codec (detectors/state.py): field kinds round trip, errors name what the blob was read as."""

from __future__ import annotations

import numpy as np
import pytest

from detectors import get_detector_class
from detectors.state import StateError, pack_state, unpack_state
from jobs.stateful_step import BucketState


def test_bytes_fields_round_trip_next_to_other_kinds() -> None:
    fields = {"inner": b"\x00ADS1\xff" * 3, "empty": b"", "x": 1.5, "n": 3, "a": np.arange(4.0), "s": "é"}
    header, out = unpack_state(pack_state("demo", 1, {"p": 1}, fields), "demo state")
    assert header["name"] == "demo"
    assert out["inner"] == fields["inner"] and out["empty"] == b""
    assert isinstance(out["inner"], bytes)
    assert (out["x"], out["n"], out["s"]) == (1.5, 3, "é") and np.array_equal(out["a"], fields["a"])


def test_truncated_state_is_a_state_error() -> None:
    # a cut anywhere in the last field (its name, kind, length or payload)
    for last in ({"inner": b"abcdef" * 10}, {"name": "abcdef" * 3}, {"xs": np.arange(5.0)}):
        blob = pack_state("demo", 1, {}, {"n": 1, **last})
        field = len(blob) - len(pack_state("demo", 1, {}, {"n": 1}))
        for cut in range(len(blob) - field + 1, len(blob)):
            with pytest.raises(StateError, match=r"^demo state: corrupt state blob"):
                unpack_state(blob[:cut], "demo state")


def test_errors_name_what_the_blob_was_read_as() -> None:
    with pytest.raises(StateError, match=r"^bucket state: not a state blob") as caught:
        BucketState.decode(b"garbage")
    assert "detector" not in str(caught.value)
    ema = get_detector_class("ema")
    with pytest.raises(StateError, match=r"^detector 'ema': not a state blob"):
        ema.from_state(b"garbage")
    with pytest.raises(StateError, match=r"^detector 'ema': corrupt state blob"):
        ema.from_state(ema().to_state()[:-3])
