"""A failed JDBC write is retried, not skipped (jobs/jdbc.py)."""

from __future__ import annotations

import pytest

from jobs.config import JdbcConfig
from jobs.jdbc import JdbcError, JdbcTable


class FlakyTable(JdbcTable):
    """A table whose database is down for the first ``failures`` writes."""

    def __init__(self, failures: int, retries: int) -> None:
        super().__init__(
            spark=None, config=JdbcConfig(url="jdbc:sqlite:/unused.db", write_retries=retries), stream_name="s"
        )
        self.failures, self.calls, self.merged = failures, 0, 0

    def staging_frame(self, results):
        return results

    def clear_staging(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise JdbcError("table predictions: database is locked")

    def write_staging(self, frame) -> None:
        pass

    def merge_staging(self) -> None:
        self.merged += 1


def test_write_is_retried_until_it_succeeds():
    table, waits = FlakyTable(failures=3, retries=5), []
    table.upsert(object(), sleep=waits.append)
    assert (table.calls, table.merged) == (4, 1)
    assert waits == [1.0, 2.0, 4.0]


def test_write_fails_the_batch_after_the_last_retry():
    table, waits = FlakyTable(failures=10, retries=2), []
    with pytest.raises(JdbcError, match="locked"):
        table.upsert(object(), sleep=waits.append)
    assert (table.calls, table.merged, waits) == (3, 0, [1.0, 2.0])
