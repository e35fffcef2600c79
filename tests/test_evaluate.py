"""Evaluation end to end on exported ONNX models, and the shipped evaluators."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from service.files import sha256_file
from service.manifest import Manifest, load_manifest
from training.__main__ import main
from training.data import make_source, ring8_means
from training.evaluate import evaluate, report
from training.export import to_onnx
from training.feature_net import EVALUATOR_DIR, MIN_ACCURACY
from training.networks import NetSpec


class PerfectRing(nn.Module):
    """Samples the 8-mode ring exactly: the mode from the argmax of z[:8], the offset from 0.01·z[8:10]."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        means = ring8_means()
        return means[z[:, :8].argmax(1)] + 0.01 * z[:, 8:10]


class Collapsed(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ring8_means()[0] + 0.0 * z[:, :2]


def export_toy(module: nn.Module, root: Path, name: str) -> Path:
    path = root / name / "1"
    path.mkdir(parents=True)
    spec = NetSpec(arch="mlp", kind="vector", out_shape=(2,), z_dim=10, num_classes=0)
    opset = to_onnx(module, spec, path / "model.onnx")
    manifest = Manifest(
        name=name, version=1, kind="vector", z_dim=10, num_classes=0, class_names=[], output_shape=[2],
        value_range=None, input_names=["z"], output_names=["x"], opset=opset,
        onnx_sha256=sha256_file(path / "model.onnx"), created_at=datetime.now(UTC), parity_max_abs_diff=0.0,
        training={"preset": "toy2d", "data": "ring8", "steps": 0, "seed": 0, "config": {}, "wall_time_s": 0,
                  "library_versions": {}},
    )  # fmt: skip
    (path / "manifest.json").write_text(manifest.model_dump_json())
    return path


def test_a_perfect_ring_sampler_passes_its_gates(tmp_path: Path) -> None:
    path = export_toy(PerfectRing(), tmp_path, "ring8")
    sha = sha256_file(path / "model.onnx")
    manifest = evaluate(tmp_path, "ring8", seeds=5)
    assert manifest.metrics["modes"] == 8 and manifest.metrics["modes_se"] == 0
    assert abs(manifest.metrics["high_quality_pct"] - 98.89) < 1.0 and manifest.metrics["reverse_kl"] < 0.005
    assert all(g.passed for g in manifest.gate_results()) and len(manifest.gates) == 3
    assert (
        manifest.evaluation is not None
        and manifest.evaluation.seeds == 5
        and manifest.evaluation.samples == 2500
    )
    saved = load_manifest(path / "manifest.json")
    assert saved.metrics == manifest.metrics and sha256_file(path / "model.onnx") == sha == saved.onnx_sha256
    assert "modes" in report(saved) and "pass" in report(saved)


def test_a_collapsed_sampler_fails_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export_toy(Collapsed(), tmp_path, "ring8")
    assert main(["evaluate", "--model-dir", str(tmp_path), "--name", "ring8", "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "FAIL" in printed
    manifest = load_manifest(tmp_path / "ring8" / "1" / "manifest.json")
    assert manifest.metrics["modes"] == 1 and manifest.metrics["reverse_kl"] == pytest.approx(
        np.log(8), rel=1e-4
    )
    assert manifest.evaluation is not None and "evaluate --model-dir" in (manifest.evaluation.command or "")


def test_no_protocol_for_unknown_data(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="no evaluation protocol for data 'digits'"):
        evaluate(model_dir, "digits", write=False)


@pytest.mark.parametrize("data", sorted(MIN_ACCURACY))
def test_shipped_evaluators_meet_their_accuracy(data: str) -> None:
    directory = EVALUATOR_DIR / data
    info = json.loads((directory / "evaluator.json").read_text())
    assert sha256_file(directory / "model.onnx") == info["onnx_sha256"]
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    test = make_source(data, split="test")
    x = test.x.float().div(127.5).sub(1).numpy()  # type: ignore[attr-defined]
    logits = np.concatenate(
        [session.run(["logits"], {"x": x[i : i + 2000]})[0] for i in range(0, len(x), 2000)]
    )
    accuracy = float((logits.argmax(1) == test.y.numpy()).mean())  # type: ignore[attr-defined]
    assert accuracy >= MIN_ACCURACY[data] and accuracy == pytest.approx(info["test_accuracy"], abs=1e-4)
    assert session.run(["features"], {"x": x[:3]})[0].shape == (3, 128)
