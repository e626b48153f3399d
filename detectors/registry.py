"""Detectors by name: built-ins, plus plugins found through Python entry points.

A user's package adds a detector without touching this project::

    # in the plugin's setup.py / pyproject.toml
    entry_points={"streaming_anomaly.detectors": ["zscore = my_pkg.zscore:ZScoreDetector"]}

after which a job config can say ``detector: zscore``. A plugin class must subclass
:class:`detectors.base.Detector`; its ``params`` schema validates the config.

>>> sorted(available_detectors())[:2]
['cad', 'default']
>>> build_detector("ema", {"window": 10}).config["window"]
10
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from detectors.base import Detector
from detectors.params import ParamError

ENTRY_POINT_GROUP = "streaming_anomaly.detectors"

# name -> "module:Class"; imported lazily so a broken optional detector cannot
# break the others.
BUILTIN_DETECTORS: dict[str, str] = {
    "cad": "detectors.cad:CADDetector",
    "default": "detectors.default:DefaultDetector",
    "ema": "detectors.ema:EMADetector",
    "likelihood": "detectors.likelihood:LikelihoodDetector",
    "robust": "detectors.robust:RobustDetector",
}

_registered: dict[str, type[Detector]] = {}


class UnknownDetectorError(ParamError):
    pass


def register(cls: type[Detector]) -> type[Detector]:
    """Register a detector class in-process (tests, notebooks). Usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise TypeError(f"{cls!r} is not a subclass of detectors.base.Detector")
    _registered[cls.name] = cls
    return cls


def _load(target: str) -> type[Detector]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_detectors() -> dict[str, str]:
    """Every detector name a config may use -> where it comes from."""
    names = {name: target for name, target in BUILTIN_DETECTORS.items()}
    names.update({name: f"plugin {ep.value}" for name, ep in _plugins().items()})
    names.update(
        {name: f"registered {cls.__module__}.{cls.__qualname__}" for name, cls in _registered.items()}
    )
    return names


def get_detector_class(name: str, field: str = "detector") -> type[Detector]:
    """The class registered as ``name``; the error lists what is available."""
    if name in _registered:
        return _registered[name]
    if name in BUILTIN_DETECTORS:
        return _load(BUILTIN_DETECTORS[name])
    plugin = _plugins().get(name)
    if plugin is not None:
        cls = plugin.load()
        if not (isinstance(cls, type) and issubclass(cls, Detector)):
            raise UnknownDetectorError(
                field, f"plugin {name!r} ({plugin.value}) is not a detectors.base.Detector subclass"
            )
        return cls
    raise UnknownDetectorError(
        field, f"unknown detector {name!r}; available: {', '.join(sorted(available_detectors()))}"
    )


def build_detector(name: str, params: Mapping[str, Any] | None = None, field: str = "detector") -> Detector:
    """A fresh detector; parameter errors name ``field``.params.<param>."""
    cls = get_detector_class(name, field)
    validated = cls.params.validate(params or {}, prefix=f"{field}.params.")
    return cls(**validated)


def detector_from_state(name: str, params: Mapping[str, Any] | None, blob: bytes | None) -> Detector:
    """The detector for one key: restored from ``blob``, or fresh when there is none."""
    if blob is None:
        return build_detector(name, params)
    return get_detector_class(name).from_state(blob, **dict(params or {}))
