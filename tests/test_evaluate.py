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
from service.quality_gates import QualityGate
from training.__main__ import main
from training.data import make_source, ring8_means
from training.evaluate import GATES, evaluate, gates_for, protocol_gates, report
from training.export import to_onnx
from training.feature_net import MIN_ACCURACY, evaluator_dir
from training.independent_evaluator import MIN_ACCURACY as INDEPENDENT_MIN_ACCURACY
from training.independent_evaluator import real_floor
from training.networks import NetSpec
from training.splits import train_minus_validation, train_split, validation_split


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


SHIPPED = [(data, "first") for data in sorted(MIN_ACCURACY)] + [
    (data, "independent") for data in sorted(INDEPENDENT_MIN_ACCURACY)
]


@pytest.mark.parametrize(("data", "space"), SHIPPED, ids=[f"{d}-{s}" for d, s in SHIPPED])
def test_shipped_evaluators_meet_their_accuracy(data: str, space: str) -> None:
    directory = evaluator_dir(data, space)
    info = json.loads((directory / "evaluator.json").read_text())
    assert sha256_file(directory / "model.onnx") == info["onnx_sha256"]
    assert (directory / "model.onnx").stat().st_size < 5_000_000
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    test = make_source(data, split="test")
    x = test.x.float().div(127.5).sub(1).numpy()  # type: ignore[attr-defined]
    logits = np.concatenate(
        [session.run(["logits"], {"x": x[i : i + 2000]})[0] for i in range(0, len(x), 2000)]
    )
    accuracy = float((logits.argmax(1) == test.y.numpy()).mean())  # type: ignore[attr-defined]
    minimum = (MIN_ACCURACY if space == "first" else INDEPENDENT_MIN_ACCURACY)[data]
    assert accuracy >= minimum and accuracy == pytest.approx(info["test_accuracy"], abs=1e-4)
    assert session.run(["features"], {"x": x[:3]})[0].shape == (3, 128)


@pytest.mark.parametrize("data", sorted(INDEPENDENT_MIN_ACCURACY))
def test_the_independent_evaluator_is_another_network_with_its_own_floor(data: str) -> None:
    """Another architecture, seed and training set (train minus validation; its epoch chosen on validation),
    and the recorded real-vs-real floor is what its shipped ONNX file gives."""
    first = json.loads((evaluator_dir(data) / "evaluator.json").read_text())
    info = json.loads((evaluator_dir(data, "independent") / "evaluator.json").read_text())
    assert info["onnx_sha256"] != first["onnx_sha256"] and info["seed"] != first["seed"]
    assert info["feature_space"] != first["feature_space"]
    assert "minus the validation split" in info["trained_on"] and info["kept_epoch"] <= info["epochs"]
    assert info["validation_accuracy"] == max(info["history"])
    assert real_floor(evaluator_dir(data, "independent"), data)["fd_floor"] == pytest.approx(
        info["fd_floor"], rel=1e-4
    )


def test_the_validation_split_is_part_of_train_and_apart_from_what_the_evaluator_trained_on() -> None:
    train_x, _ = train_split("mnist")
    val_x, _ = validation_split("mnist")
    rest_x, _ = train_minus_validation("mnist")
    assert len(val_x) == 500 and len(rest_x) == len(train_x) - 500
    rows = {bytes(row) for row in rest_x.flatten(1).numpy()}
    assert not any(bytes(row) in rows for row in val_x.flatten(1).numpy())


def test_every_image_gate_holds_in_both_spaces_with_the_same_threshold() -> None:
    gates = protocol_gates("fashion-mnist/conditional")
    assert gates == [
        ("class_accuracy", ">=", 0.92),
        ("fd_ratio", "<=", 3.0),
        ("independent.class_accuracy", ">=", 0.92),
        ("independent.fd_ratio", "<=", 3.0),
    ]
    assert protocol_gates("ring8") == GATES["ring8"]  # no evaluator network: one space
    custom = QualityGate(metric="recall", op=">=", threshold=0.1)
    old = QualityGate(metric="class_accuracy", op=">=", threshold=0.90)
    kept = gates_for("fashion-mnist/conditional", [old, custom])
    assert [g.metric for g in kept][-1] == "recall" and len(kept) == 5
    assert next(g for g in kept if g.metric == "class_accuracy").threshold == 0.92
