"""The worked plugin example (tests/plugin_example) is found through its entry point.

Two ways of "installing" it into a throw-away directory put on ``sys.path``:

* the real thing, ``pip install --no-deps --target``, when this environment can
  build a wheel from a setup.py offline (needs ``wheel`` or setuptools >= 70.1);
* always: the package's own setup.py writing its metadata (``egg_info``), which
  is what ``importlib.metadata`` reads for any installed distribution.

Either way nothing is registered in-process: ``build_detector`` must find the
detector through ``importlib.metadata`` entry points like any plugin.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from detectors import build_detector
from detectors.registry import ENTRY_POINT_GROUP, available_detectors, get_detector_class

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "plugin_example"


def _can_build_wheels() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1)


def _forget_plugin_modules() -> None:
    # pytest --doctest-modules may have imported the example from the source tree;
    # make sure the entry point loads the "installed" copy.
    for name in [m for m in sys.modules if m == "zscore_example" or m.startswith("zscore_example.")]:
        del sys.modules[name]


@pytest.fixture
def on_sys_path(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "site"
    target.mkdir()
    _forget_plugin_modules()
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        _forget_plugin_modules()
        importlib.invalidate_caches()


def _check_plugin_works(site: Path) -> None:
    assert "zscore_example" in available_detectors()
    cls = get_detector_class("zscore_example")
    # Loaded from the installed copy, not from the source tree.
    assert Path(sys.modules[cls.__module__].__file__).resolve().is_relative_to(site.resolve())
    det = build_detector("zscore_example", {"z": 3.0, "warmup": 5})
    results = [det.update(t, 10.0 + (t % 2)) for t in range(20)]
    assert results[0].value_upper_limit is None and results[-1].value_upper_limit is not None
    assert not any(r.is_anomaly for r in results)
    assert det.update(20, 100.0).is_anomaly
    # State goes through the same contract as built-ins.
    restored = cls.from_state(det.to_state(), z=3.0, warmup=5)
    assert restored.update(21, 10.5) == det.update(21, 10.5)


def test_plugin_is_not_available_without_installing() -> None:
    assert "zscore_example" not in available_detectors()


def test_plugin_found_via_setup_py_metadata(on_sys_path: Path, tmp_path: Path) -> None:
    # Build in a copy: setup.py writes build artefacts next to itself.
    src = shutil.copytree(PLUGIN_SRC, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(on_sys_path)],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=60,
    )
    shutil.copytree(src / "zscore_example", on_sys_path / "zscore_example")
    entry_points = (next(on_sys_path.glob("*.egg-info")) / "entry_points.txt").read_text()
    assert f"[{ENTRY_POINT_GROUP}]" in entry_points
    _check_plugin_works(on_sys_path)


@pytest.mark.skipif(not _can_build_wheels(), reason="offline wheel build needs `wheel` or setuptools>=70.1")
def test_plugin_installed_with_pip(on_sys_path: Path, tmp_path: Path) -> None:
    src = shutil.copytree(PLUGIN_SRC, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(on_sys_path),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    _check_plugin_works(on_sys_path)
