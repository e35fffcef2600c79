"""Encoder (GAN inversion) training side: the ONNX-to-torch generator rebuild, encoder training, its ONNX export
and manifest section, the all-zero-c rule, the projector and the latent directions. Tiny nets on sklearn's
8x8 digits: seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from service.files import sha256_file
from service.graph_signature import check_signature
from service.manifest import MANIFEST_FILE, Direction, Manifest, load_manifest, save_manifest
from service.quality_gates import QualityGate
from tests.support import tiny_config
from training.__main__ import main
from training.edit_data import RealImages
from training.encoder import EncoderConfig, build_encoder, load_encoder, losses, psnr
from training.encoder_export import encoder_feeds, update_encoder
from training.encoder_net import PerceptualNet
from training.export import PARITY_BATCHES, export, graph_signature
from training.onnx_generator import load_exported

TINY_ENCODER = ["width=8", "hidden=16", "batch_size=8", "perceptual_steps=3", "val_images=20", "eval_every=2"]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _train_encoder(root: Path, name: str, run_dir: Path) -> None:
    sets = [item for pair in TINY_ENCODER for item in ("--set", pair)]
    argv = ["encoder", "--model-dir", str(root), "--name", name, "--run-dir", str(run_dir), "--steps", "4"]
    assert main([*argv, "--threads", "1", *sets]) == 0


@pytest.fixture(scope="module")
def edit_models(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared `digits` model (conditional DCGAN) and an unconditional MLP G on the same digits,
    each with a tiny encoder trained and exported by the CLI (the shared model_dir is not modified)."""
    from training.loop import train

    root = tmp_path_factory.mktemp("edit-models")
    shutil.copytree(model_dir / "digits", root / "digits")
    mlp_run = tmp_path_factory.mktemp("mlp-digits")
    train(tiny_config("mlp", data="digits", steps=3), mlp_run, progress=False)
    export(mlp_run, root, "mlp-digits")
    for name in ("digits", "mlp-digits"):
        _train_encoder(root, name, root.parent / f"{root.name}-{name}-run")
    return root


def _run_dir(root: Path, name: str) -> Path:
    return root.parent / f"{root.name}-{name}-run"


@pytest.mark.parametrize("name", ["digits", "mlp-digits"])
def test_generator_rebuilt_from_onnx_matches_onnxruntime(edit_models: Path, name: str) -> None:
    model = load_exported(edit_models, name)
    assert model.parity <= 1e-4
    rng = np.random.default_rng(5)
    feeds = {"z": rng.standard_normal((9, model.spec.z_dim), dtype=np.float32)}
    if model.spec.num_classes:
        feeds["c"] = np.eye(model.spec.num_classes, dtype=np.float32)[rng.integers(10, size=9)]
    (want,) = _session(model.path / "model.onnx").run(["x"], feeds)
    with torch.no_grad():
        got = model.G(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    assert np.abs(got - want).max() <= 1e-4
    assert not any(p.requires_grad for p in model.G.parameters())  # frozen: only E (or z) is trained


def test_rebuild_refuses_a_generator_whose_file_changed(edit_models: Path, tmp_path: Path) -> None:
    shutil.copytree(edit_models / "digits", tmp_path / "digits")
    onnx_path = next((tmp_path / "digits").iterdir()) / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(RuntimeError, match="sha256"):
        load_exported(tmp_path, "digits")


@pytest.mark.parametrize("name", ["digits", "mlp-digits"])
def test_encoder_graph_signature_and_parity(edit_models: Path, name: str) -> None:
    model = load_exported(edit_models, name)
    manifest = model.manifest
    assert manifest.encoder is not None
    path = model.path / "encoder.onnx"
    assert manifest.encoder.sha256 == sha256_file(path)
    assert path.stat().st_size < 10 * 1024 * 1024
    session = _session(path)
    check_signature(
        graph_signature(__import__("onnx").load(str(path)).graph.input),
        graph_signature(__import__("onnx").load(str(path)).graph.output),
        manifest.encoder_signature(),
    )
    assert [i.name for i in session.get_inputs()] == list(manifest.encoder_signature()[0])
    assert 0 <= manifest.encoder.parity_max_abs_diff <= 1e-4
    net, _ = load_encoder(_run_dir(edit_models, name), model)
    for batch in PARITY_BATCHES:
        feeds = encoder_feeds(manifest, batch, seed=9)
        with torch.no_grad():
            out = net(*(torch.from_numpy(v) for v in feeds.values()))
        expected = out if isinstance(out, tuple) else (out,)
        for want, got in zip(expected, session.run(None, feeds), strict=True):
            assert got.shape == (batch, *want.shape[1:])
            assert np.abs(got - want.numpy()).max() <= 1e-4


def test_exporting_an_encoder_leaves_the_generator_alone(edit_models: Path, model_dir: Path) -> None:
    original = load_manifest(next((model_dir / "digits").iterdir()) / MANIFEST_FILE)
    edited = load_exported(edit_models, "digits").manifest
    assert edited.onnx_sha256 == original.onnx_sha256
    assert edited.model_dump(exclude={"encoder"}) == original.model_dump(exclude={"encoder"})
    training = edited.encoder.training if edited.encoder else {}
    assert training["steps"] == 4 and training["seed"] == 0 and "command" in training
    assert original.encoder is None  # the shared fixture was not touched


def test_all_zero_class_row_uses_the_predicted_class(edit_models: Path) -> None:
    model = load_exported(edit_models, "digits")
    session = _session(model.path / "encoder.onnx")
    x = np.random.default_rng(1).uniform(-1, 1, (16, 1, 8, 8)).astype(np.float32)
    z_unknown, logits = session.run(["z", "logits"], {"x": x, "c": np.zeros((16, 10), np.float32)})
    predicted = np.eye(10, dtype=np.float32)[logits.argmax(1)]
    z_predicted, logits_again = session.run(["z", "logits"], {"x": x, "c": predicted})
    np.testing.assert_allclose(z_unknown, z_predicted, atol=1e-6)
    np.testing.assert_allclose(logits, logits_again, atol=1e-6)  # logits come from x alone
    other = np.roll(predicted, 1, axis=1)  # a class that is not the prediction
    z_other, _ = session.run(["z", "logits"], {"x": x, "c": other})
    assert np.abs(z_other - z_unknown).max() > 1e-4


def test_encoder_training_reduces_its_loss_on_a_fixed_batch(edit_models: Path) -> None:
    model = load_exported(edit_models, "digits")
    cfg = EncoderConfig(width=8, hidden=16, batch_size=16, lr=1e-3)
    torch.manual_seed(0)
    E, percept = build_encoder(model, cfg), PerceptualNet(10, 8).eval().requires_grad_(False)

    def loss() -> dict[str, torch.Tensor]:
        images = RealImages("digits", "train", seed=3)  # the same batch and latents every time
        return losses(E, model, percept, images, cfg, torch.Generator().manual_seed(3))

    with torch.no_grad():
        before = {k: float(v) for k, v in loss().items()}
    optimizer = torch.optim.Adam(E.parameters(), lr=1e-3)
    for _ in range(40):
        optimizer.zero_grad()
        loss()["total"].backward()
        optimizer.step()
    with torch.no_grad():
        after = {k: float(v) for k, v in loss().items()}
    # The 3-step generator cannot reconstruct the digits (pixel and perceptual barely move); the terms E
    # controls alone must fall.
    assert after["total"] < before["total"]
    assert after["latent"] < 0.95 * before["latent"]
    assert after["class"] < 0.8 * before["class"]
    assert after["reg"] < 0.5 * before["reg"]


def test_encoder_section_round_trips(edit_models: Path, tmp_path: Path) -> None:
    path = next((edit_models / "digits").iterdir())
    gates = [QualityGate(metric="psnr", op=">=", threshold=20.0)]
    updated = update_encoder(path, metrics={"psnr": 12.5, "ssim": 0.4}, gates=gates)
    assert updated.encoder is not None
    results = updated.encoder.gate_results()
    assert [(r.metric, r.passed) for r in results] == [("psnr", False)]
    again = load_manifest(path / MANIFEST_FILE)
    assert again == updated
    save_manifest(again, tmp_path / MANIFEST_FILE)
    assert load_manifest(tmp_path / MANIFEST_FILE) == updated
    assert Manifest.model_validate_json(updated.model_dump_json()) == updated


def test_projector_improves_on_the_encoder_start(edit_models: Path) -> None:
    from training.project import project

    model = load_exported(edit_models, "mlp-digits")
    x, _ = RealImages("digits", "val").first(8)
    session = _session(model.path / "encoder.onnx")
    (z0,) = session.run(["z"], {"x": x.numpy()})
    z, history = project(model.G, x, torch.from_numpy(z0), None, steps=40)
    with torch.no_grad():
        start = float(psnr(model.G(torch.from_numpy(z0), None), x).mean())
        end = float(psnr(model.G(z, None), x).mean())
    assert end > start + 0.1  # a 3-step generator reaches few images; it must still get closer
    assert history[-1] < history[0]


def test_directions_are_unit_vectors_of_length_z_dim(edit_models: Path) -> None:
    from training.directions import fit_normals, store_directions

    model = load_exported(edit_models, "mlp-digits")
    z_dim = model.spec.z_dim
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3000, z_dim)).astype(np.float32)
    labels = z[:, :3].argmax(1)  # class k where coordinate k is the largest of the first three
    normals = fit_normals(z, labels, 3)
    assert normals.shape == (3, z_dim)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert normals[0, 0] > 0.5 and normals[1, 1] > 0.5  # the boundary's normal points toward the class
    directions = [
        Direction(name=f"digit-{k}", vector=normals[k].tolist(), strength=3.0, target=str(k), method="test")
        for k in range(3)
    ]
    stored = store_directions(model.path, directions)
    assert [d.name for d in load_manifest(model.path / MANIFEST_FILE).directions] == [
        "digit-0",
        "digit-1",
        "digit-2",
    ]
    assert all(len(d.vector) == z_dim for d in stored.directions)
    with pytest.raises(ValueError, match="z_dim"):
        Manifest.model_validate(
            stored.model_dump()
            | {"directions": [directions[0].model_dump() | {"vector": [1.0] * (z_dim + 1)}]}
        )


def test_ssim_and_psnr() -> None:
    from training.edit_eval import psnr as psnr_np
    from training.edit_eval import ssim

    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (4, 3, 28, 28)).astype(np.float32)
    noisy = np.clip(a + 0.1 * rng.standard_normal(a.shape), -1, 1).astype(np.float32)
    noisier = np.clip(a + 0.4 * rng.standard_normal(a.shape), -1, 1).astype(np.float32)
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-9)
    assert ssim(a, noisy).shape == (4,)
    assert (ssim(a, noisy) > ssim(a, noisier)).all() and (ssim(a, noisier) > 0).all()
    np.testing.assert_allclose(ssim(a, noisy), ssim(noisy, a), atol=1e-9)
    mse = ((a - noisy) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(psnr_np(a, noisy), 10 * np.log10(4 / mse), rtol=1e-5)
    # A constant image: SSIM reduces to the luminance term (2 mu_a mu_b + c1) / (mu_a^2 + mu_b^2 + c1).
    flat_a, flat_b = np.full((1, 1, 16, 16), 0.0, np.float32), np.full((1, 1, 16, 16), -0.5, np.float32)
    mu_a, mu_b, c1 = 0.5, 0.25, 0.01**2
    np.testing.assert_allclose(
        ssim(flat_a, flat_b), (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1), rtol=1e-6
    )


def test_project_cli_writes_latent_and_picture(edit_models: Path, tmp_path: Path) -> None:
    from PIL import Image

    x, _ = RealImages("digits", "val").first(1)
    pixels = ((x[0, 0].numpy() + 1) * 127.5).round().astype(np.uint8)
    Image.fromarray(pixels, "L").save(tmp_path / "digit.png")
    run_dir = _run_dir(edit_models, "digits")
    argv = [
        "project",
        "--model-dir",
        str(edit_models),
        "--name",
        "digits",
        "--image",
        str(tmp_path / "digit.png"),
    ]
    assert (
        main(
            [*argv, "--label", "3", "--steps", "5", "--run-dir", str(run_dir), "--out", str(tmp_path / "out")]
        )
        == 0
    )
    latent = np.load(tmp_path / "out" / "latent.npy")
    assert latent.shape == (load_exported(edit_models, "digits").spec.z_dim,)
    with Image.open(tmp_path / "out" / "projection.png") as picture:
        assert picture.size == (3 * (8 + 2) + 2, 8 + 4)  # original | encoder | projected
