"""The service's quality gate: off, warn and enforce, with metrics and gate results in /models and /metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.manifest import load_manifest
from service.settings import Settings


def with_quality(
    model_dir: Path, tmp_path: Path, metrics: dict[str, float], gates: list[dict[str, Any]]
) -> Path:
    root = tmp_path / "models"
    shutil.copytree(model_dir, root)
    path = root / "ring" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(metrics=metrics, gates=gates)
    path.write_text(json.dumps(manifest))
    return root


GOOD = {"modes": 8.0, "high_quality_pct": 98.0, "reverse_kl": 0.002}
GATES = [
    {"metric": "modes", "op": ">=", "threshold": 8},
    {"metric": "high_quality_pct", "op": ">=", "threshold": 97},
    {"metric": "reverse_kl", "op": "<=", "threshold": 0.005},
]


def ring_status(root: Path, mode: str) -> tuple[dict[str, Any], str]:
    with TestClient(create_app(Settings(model_dir=root, quality_gate=mode))) as client:  # type: ignore[arg-type]
        return client.get("/models/ring").json()["versions"][0], client.get("/metrics").text


def test_a_passing_model_serves_under_enforce(model_dir: Path, tmp_path: Path) -> None:
    version, metrics = ring_status(with_quality(model_dir, tmp_path, GOOD, GATES), "enforce")
    assert version["status"] == "ready" and version["quality"]["passed"]
    assert [g["passed"] for g in version["quality"]["gates"]] == [True, True, True]
    assert 'gan_model_quality{metric="high_quality_pct",model="ring",version="1"} 98.0' in metrics


@pytest.mark.parametrize("mode", ["enforce", "warn", "off"])
def test_a_failing_model(mode: str, model_dir: Path, tmp_path: Path) -> None:
    root = with_quality(model_dir, tmp_path, GOOD | {"high_quality_pct": 60.0}, GATES)
    version, _ = ring_status(root, mode)
    assert not version["quality"]["passed"]
    failed = [g for g in version["quality"]["gates"] if not g["passed"]]
    assert [(g["metric"], g["value"]) for g in failed] == [("high_quality_pct", 60.0)]
    if mode == "enforce":
        assert version["status"] == "failed"
        assert version["reason"] == "quality gate: high_quality_pct = 60.0 fails >= 97"
    else:
        assert version["status"] == "ready"


def test_a_model_without_metrics_is_refused_only_under_enforce(model_dir: Path) -> None:
    version, _ = ring_status(model_dir, "enforce")
    assert version["status"] == "failed" and "no quality metrics" in version["reason"]
    assert ring_status(model_dir, "warn")[0]["status"] == "ready"


def test_gate_results_in_the_manifest_model(model_dir: Path, tmp_path: Path) -> None:
    root = with_quality(
        model_dir, tmp_path, {"modes": 7.0, "high_quality_pct": 99.0, "reverse_kl": 0.0}, GATES
    )
    results = load_manifest(root / "ring" / "1" / "manifest.json").gate_results()
    assert [(r.metric, r.passed) for r in results] == [
        ("modes", False),
        ("high_quality_pct", True),
        ("reverse_kl", True),
    ]
