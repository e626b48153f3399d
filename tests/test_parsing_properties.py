"""Property-based test of record validation (jobs/source.py) against a plain-Python reference."""

from __future__ import annotations

import datetime as dt
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.source import INVALID_KEY
from tests.test_source_parsing import parse

MISSING = object()
# timestamps with the reason the job must give them (None: valid) and their epoch ms
TIMESTAMPS = {
    "2024-01-01T00:00:00Z": (None, 1704067200000),
    "2024-01-01T01:30:00.5+01:30": (None, 1704067200500),
    "2024-01-01T00:00:00.123-0500": (None, 1704085200123),
    "2024-01-01T00:00:00": ("ts_no_timezone", None),
    "1969-12-31T23:59:59Z": ("ts_out_of_range", None),
    "2030-06-01T00:00:00Z": ("ts_out_of_range", None),
    "not a time": ("ts_unparseable", None),
    "": ("ts_unparseable", None),
}
names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    lambda s: s.strip() != ""
)
applications = st.one_of(
    names,
    st.sampled_from(["", "   ", "a\u0001b", "x" * 513, 5, True, None, MISSING, ["a"]]),
)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.sampled_from(["1.5", True, None, MISSING, {"v": 1}]),
)
timestamps = st.one_of(st.sampled_from(sorted(TIMESTAMPS)), st.sampled_from([123, None, MISSING]))


@st.composite
def records(draw):
    message = {}
    for field, strategy in (("application", applications), ("value", values), ("ts", timestamps)):
        item = draw(strategy)
        if item is not MISSING:
            message[field] = item
    text = json.dumps(message)
    if draw(st.integers(0, 9)) == 0:  # sometimes truncate the JSON
        text = text[: draw(st.integers(0, len(text) - 1))]
    return message, text


def expected_reason(message: dict, text: str) -> str | None:
    """The first failing check, in the job's order; None when the record is valid."""
    try:
        json.loads(text)
    except ValueError:
        return "invalid_json"
    for field, ok in (
        ("application", lambda v: isinstance(v, str)),
        ("value", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
        ("ts", lambda v: isinstance(v, str)),
    ):
        if field not in message:
            return "missing_field"
        if message[field] is None:
            return "null_field"
        if not ok(message[field]):
            return "wrong_type"
    app = message["application"]
    if app.strip() == "":
        return "empty_application"
    if len(app) > 512 or any(ord(c) < 32 or ord(c) == 127 for c in app):
        return "invalid_application"
    if not math.isfinite(float(message["value"])):
        return "value_not_finite"
    return TIMESTAMPS[message["ts"]][0]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(records(), min_size=40, max_size=40))
def test_every_record_is_either_a_valid_event_or_a_reasoned_reject(spark, batch):
    rows = parse(spark, [text for _, text in batch]).orderBy("src_offset").collect()
    assert len(rows) == len(batch)
    for row, (message, text) in zip(rows, batch, strict=True):
        reason = expected_reason(message, text)
        assert row.reason == reason, (text, row.reason, row.detail)
        if reason is None:
            assert row.gkey == message["application"]
            assert row.value == float(message["value"])
            assert row.ts_ms == TIMESTAMPS[message["ts"]][1]
        else:
            assert row.gkey == INVALID_KEY and row.detail and bytes(row.raw) == text.encode()


def test_reference_timestamps_are_right():
    ts = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1000
    assert TIMESTAMPS["2024-01-01T00:00:00Z"][1] == ts
