from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import training.export as export_module
from service.files import sha256_file
from service.manifest import load_manifest
from training.__main__ import main
from training.export import ONNX_OPSET, PARITY_BATCHES, ExportError, check_graph, export, load_generator


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(conditional_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(conditional_run, tmp_path_factory.mktemp("models"), "digits-cgan")


def test_layout_and_manifest(exported: Path, conditional_run: Path) -> None:
    assert exported.name == "1" and exported.parent.name == "digits-cgan"
    assert sorted(p.name for p in exported.iterdir()) == [
        "manifest.json",
        "model.onnx",
    ]  # single file, no side data
    manifest = load_manifest(exported / "manifest.json")
    assert manifest.onnx_sha256 == sha256_file(exported / "model.onnx")
    assert (manifest.kind, manifest.z_dim, manifest.num_classes, manifest.output_shape) == (
        "image",
        16,
        10,
        [1, 8, 8],
    )
    assert manifest.input_names == ["z", "c"] and manifest.output_names == ["x"]
    assert manifest.class_names == [str(d) for d in range(10)] and manifest.value_range == (-1.0, 1.0)
    assert 0 <= manifest.parity_max_abs_diff <= 1e-4
    assert manifest.opset == ONNX_OPSET == onnx.load(str(exported / "model.onnx")).opset_import[0].version
    provenance = manifest.training
    assert (provenance.preset, provenance.data, provenance.steps, provenance.seed) == ("cgan", "digits", 3, 0)
    assert provenance.config["batch_size"] == 16 and provenance.exported_weights == "ema"
    assert {"torch", "onnx", "onnxruntime", "numpy", "python"} <= set(provenance.library_versions)
    assert provenance.wall_time_s > 0


def test_graph_contract(exported: Path) -> None:
    session = _session(exported / "model.onnx")
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == ["z", "c"] and [o.name for o in session.get_outputs()] == ["x"]
    assert isinstance(inputs["z"].shape[0], str) and inputs["z"].shape[1] == 16 and inputs["c"].shape[1] == 10
    assert all(i.type == "tensor(float)" for i in session.get_inputs())


@pytest.mark.parametrize("batch", [*PARITY_BATCHES, 3, 130])
def test_parity_with_torch_at_any_batch(exported: Path, conditional_run: Path, batch: int) -> None:
    model, _ = load_generator(conditional_run)
    rng = np.random.default_rng(batch)
    z = rng.standard_normal((batch, 16), dtype=np.float32)
    c = rng.dirichlet(np.ones(10), size=batch).astype(np.float32)  # soft labels too
    (x,) = _session(exported / "model.onnx").run(["x"], {"z": z, "c": c})
    with torch.no_grad():
        expected = model(torch.from_numpy(z), torch.from_numpy(c)).numpy()
    assert x.shape == (batch, 1, 8, 8) and np.abs(x - expected).max() <= 1e-4
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_a_sample_does_not_depend_on_its_batch(exported: Path) -> None:
    session = _session(exported / "model.onnx")
    rng = np.random.default_rng(0)
    z, c = (
        rng.standard_normal((64, 16), dtype=np.float32),
        np.eye(10, dtype=np.float32)[rng.integers(10, size=64)],
    )
    (whole,) = session.run(["x"], {"z": z, "c": c})
    (single,) = session.run(["x"], {"z": z[5:6], "c": c[5:6]})
    np.testing.assert_allclose(whole[5:6], single, atol=1e-6)  # eval-mode BatchNorm: no batch statistics


def test_vector_model(vector_run: Path, tmp_path: Path) -> None:
    target = export(vector_run, tmp_path, "ring8")
    manifest = load_manifest(target / "manifest.json")
    assert manifest.kind == "vector" and manifest.output_shape == [2] and manifest.value_range is None
    assert manifest.input_names == ["z"] and manifest.num_classes == 0 and manifest.class_names == []
    (x,) = _session(target / "model.onnx").run(["x"], {"z": np.zeros((7, 8), np.float32)})
    assert x.shape == (7, 2)


def test_versions(vector_run: Path, tmp_path: Path) -> None:
    assert export(vector_run, tmp_path, "m").name == "1"
    assert export(vector_run, tmp_path, "m", weights="raw").name == "2"
    assert export(vector_run, tmp_path, "m", 7).name == "7"
    assert export(vector_run, tmp_path, "m").name == "8"  # one above the highest
    with pytest.raises(ExportError, match="already exists: versions are immutable"):
        export(vector_run, tmp_path, "m", 2)
    with pytest.raises(ExportError, match="positive integer, got 0"):
        export(vector_run, tmp_path, "m", 0)
    raw, ema = (load_manifest(tmp_path / "m" / v / "manifest.json") for v in ("2", "1"))
    assert raw.training.exported_weights == "raw" and raw.onnx_sha256 != ema.onnx_sha256


def test_a_graph_off_the_contract_is_refused_with_the_contract_message(
    vector_run: Path, tmp_path: Path
) -> None:
    target = export(vector_run, tmp_path, "m")
    spec = load_generator(vector_run)[1].spec
    with pytest.raises(ExportError, match=r"^z: dims \[8\] disagree with the manifest's \[9\]$"):
        check_graph(target / "model.onnx", dataclasses.replace(spec, z_dim=9))
    with pytest.raises(ExportError, match=r"graph inputs \['z'\] != expected \['z', 'c'\]"):
        check_graph(target / "model.onnx", dataclasses.replace(spec, num_classes=3))


def test_failed_parity_leaves_nothing(
    vector_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export_module, "PARITY_TOLERANCE", -1.0)
    with pytest.raises(ExportError, match=r"parity failed: max \|torch - onnx\| = .* > -1"):
        export(vector_run, tmp_path, "m")
    assert list((tmp_path / "m").iterdir()) == []


def test_export_without_ema_uses_raw_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, models = tmp_path / "run", tmp_path / "models"
    assert main(["train", "--preset", "mlp", "--dry-run", "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert main(["export", "--run-dir", str(run_dir), "--model-dir", str(models), "--name", "mnist-gan"]) == 0
    assert "exported" in capsys.readouterr().out
    manifest = json.loads((models / "mnist-gan" / "1" / "manifest.json").read_text())
    assert manifest["training"]["exported_weights"] == "raw"  # the mlp preset trains without EMA
    assert manifest["training"]["dry_run"] is True
    assert "train --preset mlp --dry-run" in manifest["training"]["train_command"]
    assert "export --run-dir" in manifest["training"]["export_command"]


def test_export_of_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["export", "--run-dir", str(tmp_path / "none"), "--model-dir", str(tmp_path), "--name", "x"])
        == 2
    )
    assert "no checkpoint found" in capsys.readouterr().err
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_mixture_generator_exports_with_parity_and_keeps_the_latent_contract(tmp_path: Path) -> None:
    """g_mixture: the component is picked inside the graph from z[0]; the ONNX contract is unchanged."""
    from tests.conftest import tiny_config
    from training.loop import train

    run_dir = tmp_path / "run"
    train(tiny_config("toy2d", data="ring8", steps=3, g_mixture=4, pack=1), run_dir, progress=False)
    version = export(run_dir, tmp_path / "models", "ring-mix")  # parity at 1, 7 and 64 rows checked inside
    manifest = load_manifest(version / "manifest.json")
    assert manifest.input_names == ["z"] and manifest.z_dim == 8 and manifest.output_shape == [2]
    session = _session(version / "model.onnx")
    G, _ = load_generator(run_dir)
    z = np.random.default_rng(3).standard_normal((300, 8)).astype(np.float32)
    (x,) = session.run(["x"], {"z": z})
    with torch.no_grad():
        expected = G(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(x, expected, atol=1e-5)
    (alone,) = session.run(["x"], {"z": z[5:6]})
    np.testing.assert_allclose(alone[0], x[5], atol=1e-6)  # a sample does not depend on its batch
    # The components split N(0, 1) in z[0] at its quartiles: each serves a quarter of the samples.
    edges = next(b for name, b in G.named_buffers() if name.endswith("edges")).numpy()
    np.testing.assert_allclose(edges, [-0.6744898, 0.0, 0.6744898], atol=1e-6)


def test_g_mixture_is_refused_where_it_does_not_apply() -> None:
    from training.config import preset_config

    with pytest.raises(ValueError, match="g_mixture"):
        preset_config("cgan", g_mixture=4)
    with pytest.raises(ValueError, match="g_mixture"):
        preset_config("toy2d", g_mixture=0)


def test_affine_sub_generators_export_and_start_as_near_points(tmp_path: Path) -> None:
    """g_layers=0: each sub-generator is mu_k + A_k z[1:], a Gaussian; it starts far narrower than its spread
    of centres, so that the discriminator moves it as a whole. The graph exports with parity."""
    from tests.conftest import tiny_config
    from training.loop import train

    run_dir = tmp_path / "run"
    cfg = tiny_config("toy2d", data="ring8", steps=0, g_mixture=8, g_layers=0, pack=1)
    train(cfg, run_dir, progress=False)
    G, _ = load_generator(run_dir)
    weights = [p for name, p in G.named_parameters() if name.endswith("weights.0")]
    assert len(weights) == 1 and weights[0].shape == (8, 7, 2)  # (K, z_dim - 1, 2): no hidden layer
    z = torch.randn(4000, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = G(z).numpy()
    which = G.G.component(z).numpy()
    spread = np.mean([x[which == k].std(0).mean() for k in range(8)])
    centres = np.stack([x[which == k].mean(0) for k in range(8)])
    assert spread < 0.1 * centres.std(0).mean()
    version = export(run_dir, tmp_path / "models", "ring-affine")  # parity checked inside
    (out,) = _session(version / "model.onnx").run(["x"], {"z": z[:64].numpy()})
    np.testing.assert_allclose(out, x[:64], atol=1e-5)


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("cgan", {"g_upsample": "resize"}),  # nearest-neighbour Upsample becomes an ONNX Resize
        ("dcgan", {"pack": 2, "d_norm": "none"}),  # PacDCGAN: D changes, the exported G's contract does not
        ("cgan", {"extra_convs": True}),  # SNGAN standard-CNN pattern: G ends in a 3x3 Conv
        ("wgan", {}),  # the original WGAN: DCGAN's G trained by RMSprop against a clipped critic
    ],
)
def test_dcgan_variants_export_with_parity(preset: str, overrides: dict[str, object], tmp_path: Path) -> None:
    from tests.conftest import tiny_config
    from training.loop import train

    run_dir = tmp_path / "run"
    train(tiny_config(preset, data="digits", steps=2, **overrides), run_dir, progress=False)
    version = export(run_dir, tmp_path / "models", "variant")  # parity at 1, 7 and 64 rows checked inside
    manifest = load_manifest(version / "manifest.json")
    assert manifest.output_shape == [1, 8, 8] and manifest.training.config == json.loads(
        (run_dir / "config.json").read_text()
    )
    ops = {node.op_type for node in onnx.load(str(version / "model.onnx")).graph.node}
    if overrides.get("g_upsample") == "resize":
        assert "Resize" in ops and "ConvTranspose" not in ops
    else:
        assert "ConvTranspose" in ops
    if overrides.get("extra_convs"):
        assert "Conv" in ops


def test_export_and_evaluation_stand_beside_the_loop() -> None:
    """Export and evaluation read checkpoints and run the device policy without importing the training loop."""
    import subprocess
    import sys

    code = "import sys, training.export, training.evaluate, training.feature_net; print('training.loop' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
