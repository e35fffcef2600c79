"""`python -m training project`: a latent for one image by optimisation (StyleGAN2's projector.py, shortened):
start from the encoder's z (through encoder.onnx), then Adam on z against the encoder's own losses: pixel MSE
+ the perceptual distance of its run's perceptual net + the N(0, I) shell prior, with the projector's learning
rate schedule (linear ramp-up over the first 5 %, cosine ramp-down over the last 25 %). G is the exported
generator rebuilt in torch (onnx_generator.py). Many images are projected at once: the loss is a sum of
per-image terms and Adam works per coordinate, so each image's path is what it would be alone.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.encoder_net import PerceptualNet
from training.onnx_generator import ExportedModel, load_exported

W_PIXEL, W_PERCEPTUAL, W_PRIOR = 10.0, 1.0, 0.1


def _lr(step: int, steps: int, base: float) -> float:
    t = step / max(steps, 1)
    ramp = min(1.0, (1 - t) / 0.25)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return base * ramp * min(1.0, t / 0.05 + 1e-3)


def project(
    G: torch.nn.Module, x: torch.Tensor, z0: torch.Tensor, c: torch.Tensor | None, steps: int,
    percept: PerceptualNet | None = None, lr: float = 0.05,
) -> tuple[torch.Tensor, list[float]]:  # fmt: skip
    """Optimised z (N, z_dim) from z0, and the mean loss per step."""
    z = z0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr, betas=(0.9, 0.999))
    history = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, lr)
        recon = G(z, c)
        per_image = W_PIXEL * (recon - x).pow(2).flatten(1).mean(1)
        if percept is not None:
            per_image = per_image + W_PERCEPTUAL * percept.distance(recon, x)
        per_image = per_image + W_PRIOR * (z.pow(2).mean(1) - 1).pow(2)
        loss = per_image.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()) / len(x))
    return z.detach(), history


def perceptual_for(model: ExportedModel, run_dir: Path | None) -> PerceptualNet | None:
    """The encoder run's perceptual net (its run dir from the argument or the manifest's record) if present,
    else the one shipped for the model's data (training/perceptual_store.py), else None (pixels only)."""
    from training.encoder import PERCEPTUAL_FILE, load_perceptual
    from training.perceptual_store import load_shipped

    encoder = model.manifest.encoder
    recorded = encoder.training.get("run_dir") if encoder else None
    for candidate in (run_dir, Path(recorded) if recorded else None):
        if candidate is not None and (candidate / PERCEPTUAL_FILE).is_file():
            return load_perceptual(candidate)
    return load_shipped(model.manifest.training.data)


def project_metrics(
    served: Any, x: np.ndarray, y: np.ndarray, run_dir: Path | None, evaluator: Any, steps: int = 200
) -> dict[str, float]:
    """PSNR and label preservation of the projector on these test images, beside the encoder's, and its cost."""
    from training.edit_eval import labels_of, psnr

    m = served.manifest
    model = load_exported(served.path.parent.parent, m.name, m.version)
    c = served.onehot(y) if m.num_classes else None
    z0, _ = served.encode(x, c)
    percept = perceptual_for(model, run_dir)
    started = time.perf_counter()
    ct = None if c is None else torch.from_numpy(c)
    z, _ = project(model.G, torch.from_numpy(x), torch.from_numpy(z0), ct, steps, percept)
    seconds = time.perf_counter() - started
    recon = served.decode(z.numpy(), c)
    got, _ = labels_of(evaluator, recon)
    return {
        "project_images": float(len(x)),
        "project_steps": float(steps),
        "project_psnr": float(psnr(x, recon).mean()),
        "project_encoder_psnr": float(psnr(x, served.decode(z0, c)).mean()),
        "project_label_preservation": float((got == y.reshape(len(y), -1)).all(1).mean()),
        "project_seconds_per_image": seconds / len(x),
        "project_perceptual": float(percept is not None),
    }


def read_image(path: Path, shape: list[int]) -> np.ndarray:
    """A PNG/JPEG as (1, C, H, W) float32 in [-1, 1], converted to the model's channels and size."""
    from PIL import Image

    channels, height, width = shape
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        pixels = np.asarray(image, dtype=np.float32).reshape(height, width, channels)
    return (pixels.transpose(2, 0, 1)[None] / 127.5 - 1.0).astype(np.float32)


def project_file(args: Any) -> dict[str, Any]:
    from training.edit_eval import Served, psnr
    from training.preview import image_grid

    model = load_exported(args.model_dir, args.name, args.version)
    served = Served(model.path)
    m = served.manifest
    x = read_image(args.image, m.output_shape)
    c = None
    if m.num_classes:
        label = args.label
        if label is None:
            _, logits = served.encode(x)
            assert logits is not None
            label = int(logits.argmax(1)[0])
        c = served.onehot(np.array([label]))
    z0, _ = served.encode(x, c)
    percept = perceptual_for(model, args.run_dir)
    started = time.perf_counter()
    ct = None if c is None else torch.from_numpy(c)
    z, history = project(model.G, torch.from_numpy(x), torch.from_numpy(z0), ct, args.steps, percept)
    seconds = time.perf_counter() - started
    before, after = served.decode(z0, c), served.decode(z.numpy(), c)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "latent.npy", z.numpy()[0])
    image_grid(np.concatenate([x, before, after]), nrow=3).save(out / "projection.png")
    result = {
        "latent": str(out / "latent.npy"),
        "picture": str(out / "projection.png") + " (original | encoder | projected)",
        "label": None if c is None else int(c.argmax(1)[0]),
        "encoder_psnr": round(float(psnr(x, before)[0]), 3),
        "projected_psnr": round(float(psnr(x, after)[0]), 3),
        "steps": args.steps,
        "seconds": round(seconds, 2),
        "perceptual": percept is not None,
        "loss_first_last": [round(history[0], 5), round(history[-1], 5)] if history else [],
    }
    (out / "projection.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
