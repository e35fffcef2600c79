"""Quality gates: thresholds on named metrics, and their verdicts. A manifest carries them for its generator, its
encoder and its utility (service.manifest); the service refuses a generator, or its editing, whose gates fail
(GAN_QUALITY_GATE, service.versions and service.encoders)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class QualityGate(BaseModel):
    """A threshold on one entry of `metrics`: the model passes when `metrics[metric] <op> threshold`."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    op: Literal["<=", ">="]
    threshold: float


class GateResult(BaseModel):
    metric: str
    op: Literal["<=", ">="]
    threshold: float
    value: float | None
    passed: bool


def gate_results(gates: list[QualityGate], metrics: dict[str, float]) -> list[GateResult]:
    """Each gate against `metrics`; a gate whose metric is missing fails."""
    results = []
    for gate in gates:
        value = metrics.get(gate.metric)
        passed = value is not None and (
            value <= gate.threshold if gate.op == "<=" else value >= gate.threshold
        )
        results.append(GateResult(**gate.model_dump(), value=value, passed=passed))
    return results


def gate_problem(gates: list[QualityGate], metrics: dict[str, float]) -> str | None:
    """Why these metrics do not pass these gates (None: they pass)."""
    if not metrics or not gates:
        return "no quality metrics or gates in the manifest (run `python -m training evaluate`)"
    failed = [g for g in gate_results(gates, metrics) if not g.passed]
    return "; ".join(f"{g.metric} = {g.value} fails {g.op} {g.threshold:g}" for g in failed) or None
