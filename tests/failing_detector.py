"""A detector that fails on purpose, for the fault-isolation tests."""

from __future__ import annotations

from typing import Any

from detectors import AnomalyResult, Detector, Param, ParamSchema, register


@register
class FailOnValueDetector(Detector):
    """Passes points through; raises on ``fail_value`` (a stand-in for a buggy plugin)."""

    name = "fail_on_value"
    params = ParamSchema((Param("fail_value", float, 13.0, "value that makes update raise"),))

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.seen = 0

    def _update(self, ts_ms: int, value: float) -> AnomalyResult:
        if value == self.config["fail_value"]:
            raise RuntimeError(f"cannot score {value}")
        self.seen += 1
        return AnomalyResult(value - 1, value + 1, 0.0, False)

    def _get_state(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def _set_state(self, state: dict[str, Any], version: int) -> None:
        self.seen = int(state["seen"])
