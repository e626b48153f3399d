"""The job's temp dir: where Spark's scratch files and the JVM's temp files go, emptied at start-up.

A SIGKILLed driver leaves its temp files behind (Spark's ``blockmgr-*``/``spark-*`` dirs and, the
largest, RocksDB's native library, ~17 MB extracted per JVM into ``java.io.tmpdir``). A job restarted
by a supervisor after each crash would fill ``/tmp``. So every run of a job uses the config's
``temp_dir`` (default: ``tmp`` beside the checkpoint dir) and removes what an earlier run of the same
job left there before Spark starts. A lock file (``flock``: released by the kernel when the holder
dies, even by SIGKILL) keeps a run from emptying the dir of another run that is still alive::

    temp_dir/
      .lock    held while a run is alive
      jvm/     the driver's java.io.tmpdir (and the executors' in local mode)
      spark/   spark.local.dir
      python/  TMPDIR of the driver's Python and Spark's Python workers
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import IO

log = logging.getLogger("anomaly.job")
_HELD: list[IO[str]] = []  # lock files held for the life of the process


def temp_paths(temp_dir: str | os.PathLike[str]) -> dict[str, Path]:
    root = Path(temp_dir)
    return {"root": root, "jvm": root / "jvm", "spark": root / "spark", "python": root / "python"}


def claim(temp_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Lock ``temp_dir`` for this process and empty what an earlier run left; returns its sub-dirs.

    If another live process holds the lock (a second run of the same job), nothing is removed.
    """
    paths = temp_paths(temp_dir)
    root = paths["root"]
    root.mkdir(parents=True, exist_ok=True)
    lock = (root / ".lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        log.warning("temp dir %s is in use by another live run of this job: not cleaned", root)
    else:
        _HELD.append(lock)
        freed = 0
        for entry in root.iterdir():
            if entry.name == ".lock":
                continue
            freed += _size(entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
        if freed:
            log.info("removed %.1f MB of temp files left by an earlier run in %s", freed / 1e6, root)
    for key in ("jvm", "spark", "python"):
        paths[key].mkdir(parents=True, exist_ok=True)
    return paths


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        with contextlib.suppress(OSError):
            return path.lstat().st_size
        return 0
    total = 0
    for parent, _dirs, files in os.walk(path):  # files may vanish while a run is alive: skip them
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


def usage(temp_dir: str | os.PathLike[str]) -> int:
    """Bytes under ``temp_dir`` (0 when it does not exist)."""
    root = Path(temp_dir)
    return _size(root) if root.exists() else 0
