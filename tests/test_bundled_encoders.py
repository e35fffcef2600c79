"""The bundled encoders: files that match their manifests, graphs that meet the contract, and metrics that a
quick re-measurement on the first test images reproduces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from service.files import sha256_file
from service.graph_signature import check_signature
from service.manifest import load_manifest
from service.settings import BUNDLED_MODELS
from training.edit_eval import measure
from training.export import graph_signature
from training.perceptual_store import SHIPPED, base_data

WITH_ENCODER = sorted(
    p.parent for p in BUNDLED_MODELS.glob("*/*/manifest.json") if load_manifest(p).encoder is not None
)
IDS = [f"{p.parent.name}-v{p.name}" for p in WITH_ENCODER]


def test_the_image_models_have_encoders() -> None:
    assert {p.parent.name for p in WITH_ENCODER} >= {"fashion-cgan", "mnist-gan", "stacked-mnist"}


@pytest.mark.parametrize("path", WITH_ENCODER, ids=IDS)
def test_encoder_file_and_graph(path: Path) -> None:
    manifest = load_manifest(path / "manifest.json")
    assert manifest.encoder is not None and manifest.encoder.sha256 == sha256_file(path / "encoder.onnx")
    assert manifest.onnx_sha256 == sha256_file(path / "model.onnx")
    assert (path / "encoder.onnx").stat().st_size < 10 * 1024 * 1024
    graph = onnx.load(str(path / "encoder.onnx")).graph
    check_signature(graph_signature(graph.input), graph_signature(graph.output), manifest.encoder_signature())
    assert manifest.encoder.parity_max_abs_diff <= 1e-4
    assert manifest.encoder.metrics and manifest.encoder.gates and manifest.encoder.evaluation
    for direction in manifest.directions:
        assert len(direction.vector) == manifest.z_dim
        assert np.linalg.norm(direction.vector) == pytest.approx(1.0, abs=1e-5)
    if not manifest.num_classes:
        assert manifest.directions, "unconditional models edit by named directions"


@pytest.mark.parametrize("path", WITH_ENCODER, ids=IDS)
def test_metrics_are_reproducible_on_a_quick_sample(path: Path) -> None:
    recorded = load_manifest(path / "manifest.json").encoder
    assert recorded is not None
    quick, _, _ = measure(path, 200)
    assert quick["psnr"] == pytest.approx(recorded.metrics["psnr"], abs=1.0)
    assert quick["ssim"] == pytest.approx(recorded.metrics["ssim"], abs=0.05)
    for name in ("label_preservation", "edit_success", "direction_success"):
        if name in recorded.metrics:
            assert quick[name] == pytest.approx(recorded.metrics[name], abs=0.08), name


@pytest.mark.parametrize("path", WITH_ENCODER, ids=IDS)
def test_the_projector_has_its_encoders_perceptual_net_on_a_clean_clone(path: Path) -> None:
    """The run directories are not committed: the perceptual net each encoder trained against is shipped, and
    the projector finds it when the recorded run directory is gone."""
    from training.onnx_generator import load_exported
    from training.project import perceptual_for

    model = load_exported(path.parent.parent, path.parent.name, int(path.name))
    assert model.manifest.encoder is not None
    recorded = model.manifest.encoder.training["perceptual_val_accuracy"]
    net = perceptual_for(model, run_dir=path / "no-such-run")
    assert net is not None
    with np.load(SHIPPED / f"{base_data(model.manifest.training.data)}.npz") as shipped:
        assert round(float(shipped["val_accuracy"]), 4) == recorded
