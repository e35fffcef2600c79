"""Contour figure of a 2-D model: the real mixture's density beside the generated density, same axes and levels.

Three panels: (1) the exact density of the data's mixture; (2) the generated density, a Gaussian KDE of
FIGURE_SAMPLES samples (binned: a fine 2-D histogram smoothed with `scipy.ndimage.gaussian_filter`) with
bandwidth h = σ/2, so a perfect sampler's modes look √(1 + 1/4) ≈ 1.12 times as wide as the data's; both
filled at the same levels, the density of one component at r = ½, 1, …, 4 σ from its mean; (3) a zoom onto one
mode (the one nearest the origin): the real density's 1σ/2σ/3σ lines over the generated KDE at h = σ/4.

Written at export beside the manifest (`contours.png`) for every model of a built-in mixture, and rewritten for
an exported one by `python -m training contours`. Nothing in it is read by the service.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from service.manifest import MANIFEST_FILE, ONNX_FILE, load_manifest
from service.model_folders import version_path
from training.data import MIXTURES
from training.mixture_fit import log_density

CONTOURS_FILE = "contours.png"
FIGURE_SAMPLES = 20_000
FIGURE_SEED = 0
RADII = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # filled levels: one component's density at r σ


def window(means: np.ndarray, sigma: float) -> tuple[float, float]:
    """The square [lo, hi]² both panels show: every mean with 4σ (and at least 10 % of the span) around it."""
    lo, hi = float(means.min()), float(means.max())
    margin = max(4 * sigma, 0.1 * (hi - lo))
    return lo - margin, hi + margin


def real_density(grid: np.ndarray, means: np.ndarray, sigma: float) -> np.ndarray:
    """The exact mixture density at grid points (M, 2)."""
    return np.exp(log_density(grid, means, sigma)[0])


def kde(samples: np.ndarray, lo: float, hi: float, bins: int, h: float) -> np.ndarray:
    """Binned Gaussian KDE on a bins × bins grid over [lo, hi]²: (bins, bins), index [iy, ix], a density."""
    from scipy.ndimage import gaussian_filter

    finite = samples[np.isfinite(samples).all(1)]
    counts, _, _ = np.histogram2d(finite[:, 1], finite[:, 0], bins=bins, range=[[lo, hi], [lo, hi]])
    width = (hi - lo) / bins
    smoothed = gaussian_filter(counts, sigma=h / width, mode="constant")
    return smoothed / (len(samples) * width**2)


def _centres(lo: float, hi: float, bins: int) -> np.ndarray:
    width = (hi - lo) / bins
    return lo + width * (np.arange(bins) + 0.5)


def contour_figure(samples: np.ndarray, means: np.ndarray, sigma: float, title: str, path: Path) -> Path:
    """Draw the three panels for `samples` (N, 2) against the mixture (means, σ) and save a PNG."""
    from matplotlib.figure import Figure

    lo, hi = window(means, sigma)
    bins = int(min(900, max(200, math.ceil(3 * (hi - lo) / sigma))))  # a bin at most σ/3 wide
    axis = _centres(lo, hi, bins)
    gx, gy = np.meshgrid(axis, axis)
    grid = np.stack([gx.ravel(), gy.ravel()], 1)
    real = real_density(grid, means, sigma).reshape(bins, bins)
    fake = kde(samples, lo, hi, bins, sigma / 2)
    peak = 1 / (len(means) * 2 * math.pi * sigma**2)  # one component's density at its mean
    levels = sorted(peak * math.exp(-(r**2) / 2) for r in RADII)

    fig = Figure(figsize=(12.6, 4.2), dpi=80, layout="constrained")
    panels = fig.subplots(1, 3)
    for ax, density, label in (
        (panels[0], real, "real density"),
        (panels[1], fake, "generated (KDE, h = σ/2)"),
    ):
        ax.contourf(gx, gy, density, levels=levels, cmap="viridis", extend="max")
        ax.contour(gx, gy, density, levels=levels[:1], colors="k", linewidths=0.4)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", title=label)

    centre = means[np.argmin(np.linalg.norm(means, axis=1))]
    zlo, zhi = -4 * sigma, 4 * sigma
    zbins = 160
    zaxis = _centres(zlo, zhi, zbins)
    zx, zy = np.meshgrid(zaxis + centre[0], zaxis + centre[1])
    zoom_fake = kde(samples - centre, zlo, zhi, zbins, sigma / 4)
    zoom_real = real_density(np.stack([zx.ravel(), zy.ravel()], 1), means, sigma).reshape(zbins, zbins)
    ax = panels[2]
    ax.contourf(zx, zy, zoom_fake, levels=levels, cmap="viridis", extend="max")
    lines = sorted(peak * math.exp(-(r**2) / 2) for r in (1.0, 2.0, 3.0))
    ax.contour(zx, zy, zoom_real, levels=lines, colors="r", linewidths=1.0, linestyles="--")
    ax.set(aspect="equal", title=f"zoom at ({centre[0]:.2g}, {centre[1]:.2g}); real 1/2/3σ: red dashed")
    fig.suptitle(f"{title}: {len(samples):,} samples; levels: one component's density at ½ … 4 σ")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")  # Agg; no pyplot state
    return path


def onnx_samples(onnx_path: Path, z_dim: int, n: int = FIGURE_SAMPLES, seed: int = FIGURE_SEED) -> np.ndarray:
    """n samples of an unconditional vector model from ONNX Runtime, z ~ N(0, I) from `seed`."""
    from training.output_reference import onnx_runner

    run = onnx_runner(onnx_path)
    z = np.random.default_rng(seed).standard_normal((n, z_dim), dtype=np.float32)
    return np.concatenate([run({"z": z[i : i + 5000]}) for i in range(0, n, 5000)])


def draws_contours(data: str, kind: str, num_classes: int) -> bool:
    """Whether a model gets a contour figure: an unconditional vector model of a built-in mixture."""
    return kind == "vector" and num_classes == 0 and data.split(":", 1)[0] in MIXTURES


def write_contours(version_dir: Path, out: Path | None = None) -> Path:
    """Draw an exported version's figure into `out` (default: `contours.png` beside its manifest)."""
    manifest = load_manifest(version_dir / MANIFEST_FILE)
    data = manifest.training.data.split(":", 1)[0]
    if not draws_contours(manifest.training.data, manifest.kind, manifest.num_classes):
        raise ValueError(f"{version_dir}: contour figures are for 2-D mixture models; this one is '{data}'")
    means_fn, sigma = MIXTURES[data]
    samples = onnx_samples(version_dir / ONNX_FILE, manifest.z_dim)
    title = f"{manifest.name} v{manifest.version} ({data})"
    return contour_figure(samples, means_fn().numpy(), sigma, title, out or version_dir / CONTOURS_FILE)


def contours_command(model_dir: Path, name: str, version: int | None, out: Path | None) -> Path:
    """`python -m training contours`: (re)write the figure of one exported version."""
    try:
        path = version_path(Path(model_dir), name, version)
    except LookupError as error:
        raise ValueError(str(error)) from None
    return write_contours(path, out)
