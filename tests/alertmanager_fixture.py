"""Session fixture ``alertmanager``: a real Prometheus Alertmanager on a free loopback port.

The binary is Debian's ``prometheus-alertmanager`` (``scripts/alertmanager.sh`` installs it;
``scripts/test.sh`` runs it first), run by :class:`tools.local_alertmanager.AlertmanagerServer`.
Its receiver is a webhook served by the test process, so a test reads exactly which notifications
Alertmanager sent; the same server answers other paths too (the notifier's generic webhook
target), with answers a test can script (e.g. 400 for one incident).

Without the binary the tests that use it skip -- except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.local_alertmanager import AlertmanagerServer, alertmanager_binary, start_receiver


def _unavailable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: failing instead of skipping)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def alertmanager() -> Iterator[AlertmanagerServer]:
    try:
        binary = alertmanager_binary()
    except RuntimeError as err:
        _unavailable(f"{err} (the notifier tests need it)")
    base = Path(tempfile.mkdtemp(prefix="anomaly-am-"))
    receiver = start_receiver()
    server = AlertmanagerServer.create(binary, base, receiver)
    try:
        try:
            server.start()
        except RuntimeError as err:
            _unavailable(str(err))
        yield server
    finally:
        server.stop()
        receiver.server.shutdown()
        receiver.server.server_close()
        shutil.rmtree(base, ignore_errors=True)
