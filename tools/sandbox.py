"""The dashboard's sandbox: one backtest run in a worker process, with a size cap and a timeout.

The worker runs the same code as ``python -m tools.backtest`` (read_series,
run_detector with the state round-trip, NAB scoring) on one series, so what the
page plots is what the backtest command reports. A series is either an uploaded
CSV (bytes) or a path relative to the configured data folder; a path that
resolves outside that folder is refused before any file is opened.

This module must stay importable without pyspark.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detectors.params import ParamError
from detectors.registry import available_detectors, get_detector_class

MAX_BYTES = 20 * 1024 * 1024  # an upload or a data file larger than this is refused
MAX_POINTS = 500_000
TIMEOUT_S = 60.0


class SandboxError(ValueError):
    """A request the sandbox refuses; ``field`` names the form field when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class SandboxConfig:
    data_dir: Path | None  # CSVs the sandbox may read by path; None: uploads only
    labels: Path | None  # NAB combined_windows.json, keys relative to data_dir
    timeout_s: float = TIMEOUT_S
    max_bytes: int = MAX_BYTES


def detector_forms() -> list[dict[str, Any]]:
    """Every detector and its ParamSchema as JSON, for the generated form."""
    out = []
    for name in sorted(available_detectors()):
        try:
            cls = get_detector_class(name)
        except Exception:  # a plugin that cannot be imported is left out of the form
            continue
        doc = (cls.__doc__ or "").strip().splitlines()
        params = []
        for p in cls.params.params:
            params.append(
                {
                    "name": p.name,
                    "type": p.type.__name__,
                    "default": p.default,
                    "description": p.description,
                    "minimum": p.minimum,
                    "maximum": p.maximum,
                    "exclusive_minimum": p.exclusive_minimum,
                    "exclusive_maximum": p.exclusive_maximum,
                    "choices": list(p.choices) if p.choices is not None else None,
                    "nullable": p.nullable,
                }
            )
        out.append({"name": name, "summary": doc[0] if doc else "", "params": params})
    return out


def validate_params(detector: str, raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(validated params, errors by field): every field is checked, not only the first bad one."""
    try:
        cls = get_detector_class(detector)
    except ParamError as err:
        return {}, {"detector": str(err).split(": ", 1)[-1]}
    by_name = {p.name: p for p in cls.params.params}
    errors: dict[str, str] = {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        param = by_name.get(key)
        if param is None:
            errors[key] = "unknown parameter"
            continue
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue  # left empty: the default
        if param.nullable and isinstance(value, str) and value.strip().lower() in ("null", "none"):
            value = None
        try:
            values[key] = param.coerce(value)
        except ParamError as err:
            errors[key] = str(err).split(": ", 1)[1]
    if errors:
        return {}, errors
    return cls.params.validate(values), {}


def resolve_data_path(config: SandboxConfig, relative: str) -> Path:
    """``relative`` inside the data folder, or SandboxError: no absolute paths, no ``..`` escapes."""
    if config.data_dir is None:
        raise SandboxError("no data folder is configured (--data-dir): upload a file instead", "path")
    if not relative or "\x00" in relative or os.path.isabs(relative):
        raise SandboxError("give a path relative to the data folder", "path")
    root = config.data_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise SandboxError("the path leaves the data folder", "path")
    if path.suffix.lower() != ".csv" or not path.is_file():
        raise SandboxError("no such CSV file in the data folder", "path")
    if path.stat().st_size > config.max_bytes:
        raise SandboxError(f"file larger than {config.max_bytes:,} bytes", "path")
    return path


def list_data_files(config: SandboxConfig) -> list[str]:
    if config.data_dir is None or not config.data_dir.is_dir():
        return []
    root = config.data_dir.resolve()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.csv") if p.is_file())


def _work(path: str, detector: str, params: dict[str, Any], label_key: str | None, labels: str | None) -> dict:
    """The worker process's job: backtest one series, score it when it has labels."""
    from evaluation import nab_scoring
    from tools.backtest import BacktestError, read_series, run_detector

    try:
        series = read_series(Path(path))
    except BacktestError as err:
        return {"errors": {"file": str(err).replace(path, "the file")}}
    if len(series.values) > MAX_POINTS:
        return {"errors": {"file": f"more than {MAX_POINTS:,} points"}}
    result = run_detector(detector, params, series.ts_ms, series.values)

    def clean(array: Any) -> list[float | None]:
        return [None if x != x else float(x) for x in array.tolist()]  # NaN -> null

    out: dict[str, Any] = {
        "ts": series.ts_ms.tolist(),
        "value": series.values.tolist(),
        "lower": clean(result.value_lower_limit),
        "upper": clean(result.value_upper_limit),
        "prob": clean(result.anomaly_probability),
        "is_anomaly": result.is_anomaly.tolist(),
        "windows": [],
        "score": None,
    }
    if labels and label_key:
        windows = nab_scoring.load_windows(labels)
        if label_key in windows:
            out["windows"] = windows[label_key]
            scores = nab_scoring.score_corpus(
                {label_key: nab_scoring.SeriesScores(series.timestamps, out["prob"])},
                {label_key: windows[label_key]},
            )
            out["score"] = {
                name: {"score": s.score, "threshold": s.threshold, "tp": s.tp, "fp": s.fp, "fn": s.fn}
                for name, s in scores.items()
            }
            out["label_key"] = label_key
    return out


def _child(conn: Any, args: tuple) -> None:
    try:
        conn.send(_work(*args))
    except Exception as err:  # reported on the page as one line
        conn.send({"errors": {"run": f"{type(err).__name__}: {err}"}})
    finally:
        conn.close()


def run_sandbox(
    config: SandboxConfig,
    detector: str,
    raw_params: dict[str, Any],
    relative_path: str | None = None,
    upload: bytes | None = None,
) -> dict[str, Any]:
    """Validate, then backtest in a fresh process killed after ``config.timeout_s``."""
    params, errors = validate_params(detector, raw_params)
    if errors:
        return {"errors": errors}
    label_key = None
    tmp = None
    if upload is not None:
        if len(upload) > config.max_bytes:
            return {"errors": {"file": f"upload larger than {config.max_bytes:,} bytes"}}
        fd, tmp = tempfile.mkstemp(suffix=".csv", prefix="anomaly-sandbox-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(upload)
        path = tmp
    else:
        try:
            resolved = resolve_data_path(config, relative_path or "")
        except SandboxError as err:
            return {"errors": {err.field or "path": str(err)}}
        path = str(resolved)
        assert config.data_dir is not None
        label_key = resolved.relative_to(config.data_dir.resolve()).as_posix()
    try:
        ctx = multiprocessing.get_context("spawn")  # never fork the web server's threads
        parent, child = ctx.Pipe(duplex=False)
        labels = str(config.labels) if config.labels else None
        proc = ctx.Process(target=_child, args=(child, (path, detector, params, label_key, labels)), daemon=True)
        proc.start()
        child.close()
        if not parent.poll(config.timeout_s):
            proc.kill()
            proc.join()
            return {"errors": {"run": f"the run took longer than {config.timeout_s:g} s and was stopped"}}
        try:
            out = parent.recv()
        except EOFError:
            out = {"errors": {"run": "the worker process died"}}
        proc.join(5)
        out.setdefault("detector", detector)
        out.setdefault("params", params)
        return out
    finally:
        if tmp:
            os.unlink(tmp)
