"""`python -m training directions`: named latent directions for unconditional models (InterFaceGAN, Shen et
al. 2020): sample z, label G(z) with the encoder run's perceptual net (its class head; never the shipped
evaluator, which scores the result), fit a linear boundary per class (logistic regression, one vs rest), and
take its unit normal. `z + strength * n` moves a sample toward the class.

MNIST: `digit-0` … `digit-9`. Stacked MNIST (three digits as R, G, B): one direction per channel and digit,
`red-7`, `green-7`, `blue-7` (30 in all); a 1,000-class boundary per triple would need far more samples.
The strength is the smallest of STRENGTHS at which the perceptual net sees the target on at least 90 % of
the edited latents (else the best): the encoder's latents of 500 validation images (carved from the training
split) when the version has an encoder, fresh samples otherwise. The evaluator's figures come from edit-eval
(test images), which plays no part in the choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.manifest import MANIFEST_FILE, Direction, Manifest, load_manifest, save_manifest
from training.encoder import load_perceptual
from training.encoder_net import PerceptualNet
from training.onnx_generator import ExportedModel, load_exported

STRENGTHS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
TARGET_SUCCESS = 0.9
CHANNEL_NAMES = ("red", "green", "blue")


@torch.no_grad()
def label_samples(model: ExportedModel, percept: PerceptualNet, z: np.ndarray) -> np.ndarray:
    """(N, C) per-channel class of G(z) by the perceptual net."""
    out = []
    for i in range(0, len(z), 500):
        x = model.G(torch.from_numpy(z[i : i + 500]), None)
        out.append(percept.classify(x).argmax(2).numpy())
    return np.concatenate(out)


def fit_normals(z: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(classes, z_dim) unit normals of one-vs-rest logistic boundaries."""
    from sklearn.linear_model import LogisticRegression

    normals = []
    for k in range(classes):
        target = (labels == k).astype(int)
        if target.min() == target.max():
            raise ValueError(f"class {k}: the samples are all on one side; draw more samples")
        w = LogisticRegression(C=1.0, max_iter=1000).fit(z, target).coef_[0]
        normals.append(w / np.linalg.norm(w))
    return np.asarray(normals, dtype=np.float32)


def choose_strength(
    model: ExportedModel, percept: PerceptualNet, z: np.ndarray, n: np.ndarray, channel: int, k: int
) -> tuple[float, dict[str, float]]:
    rates = {}
    for s in STRENGTHS:
        rates[s] = float((label_samples(model, percept, z + s * n)[:, channel] == k).mean())
        if rates[s] >= TARGET_SUCCESS:
            break
    strength = next((s for s, r in rates.items() if r >= TARGET_SUCCESS), max(rates, key=rates.__getitem__))
    return strength, {"own_classifier_success": rates[strength]}


def strength_latents(model: ExportedModel, rng: np.random.Generator, n: int = 500) -> np.ndarray:
    """Where the strengths are chosen: encoded validation images if there is an encoder, else samples."""
    if model.manifest.encoder is None:
        return rng.standard_normal((n, model.spec.z_dim), dtype=np.float32)
    import onnxruntime as ort

    from training.edit_data import RealImages

    x, _ = RealImages(model.data, "val").first(n)
    session = ort.InferenceSession(str(model.path / "encoder.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["z"], {"x": x.numpy()})[0]


def fit_directions(
    model: ExportedModel, percept: PerceptualNet, samples: int, seed: int = 0
) -> list[Direction]:
    if model.manifest.num_classes:
        raise ValueError(f"{model.manifest.name} is conditional: it edits by its class input, not directions")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((samples, model.spec.z_dim), dtype=np.float32)
    labels = label_samples(model, percept, z)  # (N, C)
    held = strength_latents(model, rng)
    channels = labels.shape[1]
    classes = percept.net.fc2.out_features
    directions = []
    for channel in range(channels):
        normals = fit_normals(z, labels[:, channel], classes)
        for k in range(classes):
            strength, metrics = choose_strength(model, percept, held, normals[k], channel, k)
            share = float((labels[:, channel] == k).mean())
            name = f"digit-{k}" if channels == 1 else f"{CHANNEL_NAMES[channel]}-{k}"
            where = "" if channels == 1 else f", channel {channel} ({CHANNEL_NAMES[channel]})"
            directions.append(
                Direction(
                    name=name,
                    vector=[round(float(v), 7) for v in normals[k]],
                    strength=strength,
                    target=str(k),
                    method=f"interfacegan-logistic (one vs rest, {samples} samples labelled by the encoder "
                    f"run's perceptual net{where})",
                    metrics=metrics | {"sample_share": share},
                )
            )
    return directions


def store_directions(version_dir: Path, directions: list[Direction]) -> Manifest:
    path = Path(version_dir) / MANIFEST_FILE
    manifest = load_manifest(path)
    updated = Manifest.model_validate(
        manifest.model_dump() | {"directions": [d.model_dump() for d in directions]}
    )
    save_manifest(updated, path)
    return updated


def fit_and_store(args: Any, command: str) -> dict[str, Any]:
    model = load_exported(args.model_dir, args.name, args.version)
    percept = load_perceptual(args.run_dir)
    directions = fit_directions(model, percept, args.samples)
    store_directions(model.path, directions)
    return {d.name: {"strength": d.strength, **d.metrics} for d in directions}
