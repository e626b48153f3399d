"""Declarative parameter schemas.

Every detector declares its parameters once, as a tuple of :class:`Param`.
The same schema validates job configs, fills defaults, renders ``--help``
text and documents plugins, so there is exactly one parameter surface per
detector.

>>> schema = ParamSchema((
...     Param("window", int, 100, "samples in the moving window", minimum=2),
...     Param("threshold", float, 0.99, "probability above which a point is anomalous",
...           minimum=0.0, maximum=1.0, exclusive_maximum=True),
... ))
>>> schema.validate({"window": 50})
{'window': 50, 'threshold': 0.99}
>>> schema.validate({"window": 1})
Traceback (most recent call last):
...
detectors.params.ParamError: window: must be >= 2, got 1
>>> schema.validate({"windw": 3})
Traceback (most recent call last):
...
detectors.params.ParamError: windw: unknown parameter; allowed: window, threshold
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class ParamError(ValueError):
    """A parameter value was rejected: ``field`` names the parameter, ``message`` says why.

    ``str(err)`` is ``"<field>: <message>"``; callers that report the two apart
    (a form, a config error) use the attributes, never split the string.

    >>> err = ParamError("window", "must be >= 2, got 1")
    >>> err.field, err.message, str(err)
    ('window', 'must be >= 2, got 1', 'window: must be >= 2, got 1')
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Param:
    """One parameter: name, type, default, allowed range and a description."""

    name: str
    type: type
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    choices: Sequence[Any] | None = None
    nullable: bool = False

    def coerce(self, value: Any) -> Any:
        """Return ``value`` converted to this parameter's type, or raise ParamError."""
        if value is None:
            if self.nullable:
                return None
            raise ParamError(self.name, "must not be null")
        value = self._convert(value)
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise ParamError(self.name, f"must be one of {allowed}; got {value!r}")
        if self.minimum is not None:
            if self.exclusive_minimum and not value > self.minimum:
                raise ParamError(self.name, f"must be > {self.minimum}, got {value}")
            if not self.exclusive_minimum and not value >= self.minimum:
                raise ParamError(self.name, f"must be >= {self.minimum}, got {value}")
        if self.maximum is not None:
            if self.exclusive_maximum and not value < self.maximum:
                raise ParamError(self.name, f"must be < {self.maximum}, got {value}")
            if not self.exclusive_maximum and not value <= self.maximum:
                raise ParamError(self.name, f"must be <= {self.maximum}, got {value}")
        return value

    def _convert(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ParamError(self.name, f"must be a boolean, got {value!r}")
        if self.type is int:
            if isinstance(value, bool):
                raise ParamError(self.name, f"must be an integer, got {value!r}")
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    pass
            raise ParamError(self.name, f"must be an integer, got {value!r}")
        if self.type is float:
            if isinstance(value, bool):
                raise ParamError(self.name, f"must be a number, got {value!r}")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ParamError(self.name, f"must be a number, got {value!r}") from None
            if not math.isfinite(number):
                raise ParamError(self.name, f"must be finite, got {value!r}")
            return number
        if self.type is str:
            if not isinstance(value, str):
                raise ParamError(self.name, f"must be a string, got {value!r}")
            return value
        if isinstance(value, self.type):
            return value
        raise ParamError(self.name, f"must be {self.type.__name__}, got {value!r}")

    def describe(self) -> str:
        """One line for --help and the README: name (type, default, range): description."""
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.exclusive_minimum else '>='} {self.minimum}")
        if self.maximum is not None:
            bounds.append(f"{'<' if self.exclusive_maximum else '<='} {self.maximum}")
        if self.choices is not None:
            bounds.append("one of " + "|".join(str(c) for c in self.choices))
        extra = f", {', '.join(bounds)}" if bounds else ""
        return f"{self.name} ({self.type.__name__}, default {self.default!r}{extra}): {self.description}"


@dataclass(frozen=True)
class ParamSchema:
    """An ordered set of parameters; validates a mapping into a complete dict."""

    params: tuple[Param, ...]

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate parameter names in schema: {names}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, values: Mapping[str, Any] | None = None, prefix: str = "") -> dict[str, Any]:
        """Defaults overlaid with ``values``, each checked; unknown names are errors.

        ``prefix`` is prepended to the field name in error messages, so a job config
        can report ``streams[0].detectors[1].params.window: must be >= 2``.
        """
        values = dict(values or {})
        unknown = [k for k in values if k not in self.names]
        if unknown:
            allowed = ", ".join(self.names) or "(none)"
            raise ParamError(prefix + unknown[0], f"unknown parameter; allowed: {allowed}")
        out: dict[str, Any] = {}
        for p in self.params:
            try:
                out[p.name] = p.coerce(values[p.name]) if p.name in values else p.default
            except ParamError as err:
                raise ParamError(prefix + p.name, err.message) from None
        return out

    def help(self, indent: str = "  ") -> str:
        return "\n".join(indent + p.describe() for p in self.params)
