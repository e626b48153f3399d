"""Fault injection for the restart-safety tests (tests/test_restart_safety.py).

The job calls :func:`fault_point` at named moments: ``before_kafka``,
``after_kafka`` and ``after_jdbc`` in jobs/sinks.py, ``during_jdbc_merge`` in
jobs/jdbc.py (the merge and the staging delete are done, the transaction is not
committed). When the environment variable ``ANOMALY_FAULT_POINT`` names that
point -- and ``ANOMALY_FAULT_BATCH``, if set, names the batch id -- the driver
writes ``"<point> <batch id>"`` to the file ``ANOMALY_FAULT_MARKER`` and sleeps
``ANOMALY_FAULT_SLEEP_S`` seconds (default 600), so that a test can SIGKILL it
exactly there. Unset (always, in production) a call is one comparison.
"""

from __future__ import annotations

import os
import time

# Read once, when the driver imports this module: a fault is chosen per process.
_FAULT_POINT = os.environ.get("ANOMALY_FAULT_POINT") or None


def fault_point(name: str, batch_id: int) -> None:
    """Test hook: stop here (marker file, then sleep) when ANOMALY_FAULT_POINT names this point."""
    if name != _FAULT_POINT:
        return
    wanted = os.environ.get("ANOMALY_FAULT_BATCH")
    if wanted and int(wanted) != batch_id:
        return
    marker = os.environ.get("ANOMALY_FAULT_MARKER")
    if marker:
        with open(marker, "w") as f:
            f.write(f"{name} {batch_id}\n")
    time.sleep(float(os.environ.get("ANOMALY_FAULT_SLEEP_S", "600")))
