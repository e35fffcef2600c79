"""Preview images of a generator's output: a tiled grid for images, a scatter plot for 2-D points, drawn from
fixed latents every `sample_every` steps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from training.data import MIXTURES
from training.networks import NetSpec


def image_grid(x: np.ndarray, nrow: int, pad: int = 2) -> Image.Image:
    """Tile (N, C, H, W) images in [-1, 1] into one picture with `nrow` images per row."""
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    pixels = np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    canvas = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        canvas[top : top + h, left : left + w] = pixels[i].transpose(1, 2, 0)
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas, "L" if c == 1 else "RGB")


def scatter(points: np.ndarray, means: np.ndarray | None = None, size: int = 512) -> Image.Image:
    """Plot 2-D points (N, 2) in black, with the mixture means (K, 2) as red rings when given."""
    reference = points if means is None else np.concatenate([points, means])
    finite = reference[np.isfinite(reference).all(1)]
    lo, hi = (finite.min(0), finite.max(0)) if len(finite) else (np.zeros(2), np.ones(2))
    span = float(max(hi - lo)) * 1.1 or 1.0
    centre = (hi + lo) / 2

    def to_pixel(p: np.ndarray) -> np.ndarray:
        return ((p - centre) / span + 0.5) * (size - 1) * np.array([1, -1]) + np.array([0, size - 1])

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for x, y in to_pixel(points[np.isfinite(points).all(1)]):
        draw.point((float(x), float(y)), fill="black")
    if means is not None:
        for x, y in to_pixel(means):
            draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline="red")
    return image


def save_preview(x: np.ndarray, path: Path, nrow: int, means: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = scatter(x, means) if x.ndim == 2 else image_grid(x, nrow)
    picture.save(path)


def preview_latents(
    seed: int, spec: NetSpec, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fixed latents for preview grids, drawn from their own generator so training RNG is untouched."""
    gen = torch.Generator().manual_seed(seed + 1_000_000_007)
    if spec.kind == "vector":
        n, c = 2500, None
    elif spec.num_classes:
        classes = min(spec.num_classes, 10)
        n = classes * 10
        c = F.one_hot(torch.arange(classes).repeat_interleave(10), spec.num_classes).float().to(device)
    else:
        n, c = 64, None
    return torch.randn(n, spec.z_dim, generator=gen).to(device), c


@torch.no_grad()
def write_preview(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None, path: Path, data_name: str) -> None:
    was_training = G.training
    G.eval()  # eval: BatchNorm uses (and does not update) its running statistics
    x = G(z, c).float().cpu().numpy()
    G.train(was_training)
    means = MIXTURES[data_name][0]().numpy() if data_name in MIXTURES else None
    save_preview(x, path, nrow=10 if c is not None else 8, means=means)
