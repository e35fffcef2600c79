"""Output statistics for monitoring: pure numpy, the same code at export (the reference) and in the service.

A sample is *sketched*: images average-pooled to at most SKETCH_SIDE pixels a side, flattened, and projected on
a fixed set of random sign directions (a Johnson-Lindenstrauss sketch; its signs come from PCG64's raw bits,
a stream numpy keeps stable). Each sketch is standardised by its class's reference mean and std (conditional
models; one group otherwise), so the served class mix does not move the statistics. A window of W
standardised rows gives two numbers:

- drift: how far the window's per-direction mean and spread are from the reference (location and spread are
  z-scores scaled by sqrt(W), about 1 for a healthy generator at any W);
- diversity: the mean pairwise Euclidean distance in the window, over the reference one.

The band of each is measured at export on held-out windows of the same size (see `measure_bands`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SKETCH_SIDE = 32  # images are pooled to at most this side before projecting
PIXEL_SIDE = 16  # per-pixel moments are recorded at most this side
DIRECTIONS = 32
PROJECTION_SEED = 20_231
WINDOWS = (128, 256, 512)  # larger monitor windows use the 512 band: wider than their own, conservative
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
MIN_STD = 1e-6
SINGLE_THREAD_MNK = 262_144
BAND_SIGMAS = 4.0


def pooled_shape(output_shape: Sequence[int], max_side: int) -> list[int]:
    """The shape of one sample after `pooled`: [C, H/f, W/f] for images, unchanged for vectors."""
    if len(output_shape) == 1:
        return list(output_shape)
    c, h, w = output_shape
    f = max(math.ceil(h / max_side), math.ceil(w / max_side))
    return [c, h // f, w // f]


def pooled(x: np.ndarray, max_side: int) -> np.ndarray:
    """(N, F) float32: images average-pooled by an integer factor to at most `max_side`, then flattened."""
    if x.ndim == 2:
        return np.asarray(x, dtype=np.float32)
    n, c, h, w = x.shape
    _, ph, pw = pooled_shape((c, h, w), max_side)
    f = h // ph if ph else 1
    if f > 1:
        x = x[:, :, : ph * f, : pw * f].reshape(n, c, ph, f, pw, f).mean(axis=(3, 5))
    return np.ascontiguousarray(x, dtype=np.float32).reshape(n, -1)


def projection(features: int, directions: int = DIRECTIONS, seed: int = PROJECTION_SEED) -> np.ndarray:
    """(features, directions) float32 of +-1/sqrt(features): one raw PCG64 bit per entry."""
    bits = np.random.PCG64(seed).random_raw(features * directions) >> np.uint64(63)
    signs = bits.astype(np.float32) * 2.0 - 1.0
    out: np.ndarray = (signs / np.float32(math.sqrt(features))).reshape(features, directions)
    return out


def small_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in row blocks small enough that BLAS computes each on the calling thread (OpenBLAS: M*N*K <=
    262,144). A larger product wakes BLAS's own thread pool, which on a busy machine (ONNX Runtime's threads on
    every core) was measured at 50x the cost of the work itself."""
    rows = max(1, SINGLE_THREAD_MNK // (a.shape[1] * b.shape[1]))
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    for start in range(0, a.shape[0], rows):
        np.matmul(a[start : start + rows], b, out=out[start : start + rows])
    return out


def sketch(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, directions): the samples pooled to SKETCH_SIDE, flattened and projected."""
    return small_matmul(pooled(x, SKETCH_SIDE), matrix)


def projection_sha256(matrix: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype="<f4").tobytes()).hexdigest()


def row_groups(c: np.ndarray | None, rows: int) -> np.ndarray:
    """The group of each row: its class for one-hot `c`, -1 for soft (blended) rows, 0 without classes."""
    if c is None:
        return np.zeros(rows, dtype=np.int64)
    hard = ((c == 0) | (c == 1)).all(axis=1) & (c.sum(axis=1) == 1)
    return np.where(hard, c.argmax(axis=1), -1).astype(np.int64)


def residuals(sketch: np.ndarray, groups: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Each row's sketch standardised by its group's reference mean and std."""
    if len(mean) == 1:  # one group: broadcast, no gather
        out: np.ndarray = ((sketch - mean[0]) / std[0]).astype(np.float32, copy=False)
    else:
        out = ((sketch - mean[groups]) / std[groups]).astype(np.float32, copy=False)
    return out


def drift_statistic(r: np.ndarray) -> float:
    """RMS of the location and spread z-scores of a window of standardised rows (about 1 when healthy)."""
    w = len(r)
    r64 = r.astype(np.float64)
    location = w * float(np.mean(r64.mean(axis=0) ** 2))
    spread = 2 * w * float(np.mean(np.log(np.maximum(r64.std(axis=0), MIN_STD)) ** 2))
    return math.sqrt((location + spread) / 2)


def mean_pairwise_distance(r: np.ndarray) -> float:
    """Mean Euclidean distance over the window's distinct pairs (from the Gram matrix, in float32)."""
    w = len(r)
    if w < 2:
        return 0.0
    r32 = np.ascontiguousarray(r, dtype=np.float32)
    sq = np.einsum("ij,ij->i", r32, r32)
    d2 = small_matmul(r32, np.ascontiguousarray(r32.T))
    d2 *= -2.0
    d2 += sq[:, None]
    d2 += sq[None, :]
    np.fill_diagonal(d2, 0.0)
    np.maximum(d2, 0.0, out=d2)
    np.sqrt(d2, out=d2)
    return float(d2.sum(dtype=np.float64)) / (w * (w - 1))


class WindowBand(BaseModel):
    """What healthy windows of `window` rows showed at export (held-out seeds), and the band drawn from it:
    BAND_SIGMAS standard deviations either side of the mean (a Gaussian tail of about 3e-5 a window), and
    never narrower than the extremes the trials showed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(ge=2)
    trials: int = Field(ge=2)
    drift_mean: float = Field(ge=0)
    drift_std: float = Field(ge=0)
    diversity_mean: float = Field(ge=0)
    diversity_std: float = Field(ge=0)
    drift_high: float = Field(gt=0, description="the band's upper end for the drift statistic")
    diversity_low: float = Field(ge=0, description="the band's lower end for the diversity ratio")
    diversity_high: float = Field(gt=0, description="the band's upper end for the diversity ratio")


def window_band(window: int, drift: Sequence[float], diversity: Sequence[float]) -> WindowBand:
    """The band of healthy windows from their measured drift statistics and diversity ratios."""
    d, v = np.asarray(drift, np.float64), np.asarray(diversity, np.float64)
    spread_d, spread_v = BAND_SIGMAS * d.std(ddof=1), BAND_SIGMAS * v.std(ddof=1)
    return WindowBand(
        window=window,
        trials=len(d),
        drift_mean=round(float(d.mean()), 6),
        drift_std=round(float(d.std(ddof=1)), 6),
        diversity_mean=round(float(v.mean()), 6),
        diversity_std=round(float(v.std(ddof=1)), 6),
        drift_high=round(max(float(d.max()), float(d.mean() + spread_d)), 6),
        diversity_low=round(max(0.0, min(float(v.min()), float(v.mean() - spread_v))), 6),
        diversity_high=round(max(float(v.max()), float(v.mean() + spread_v)), 6),
    )


class OutputReference(BaseModel):
    """Reference statistics of the generator's output, for the service's drift and diversity gauges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["sign-projection-v1"] = "sign-projection-v1"
    sketch_shape: list[int] = Field(description="one sample after pooling, before the projection")
    directions: int = Field(ge=1, le=1024)
    projection_seed: int
    projection_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    samples: int = Field(ge=2, description="reference rows (seed `seed`, indices 0..samples-1)")
    seed: int
    held_out_samples: int = Field(ge=2, description="rows the bands were measured on (seed `held_out_seed`)")
    held_out_seed: int
    mean: list[list[float]] = Field(
        description="[group][direction]: sketch mean per class (one group if none)"
    )
    std: list[list[float]] = Field(description="[group][direction]: sketch std per class")
    quantiles: dict[str, list[float]] = Field(description="sketch quantiles over all reference rows")
    mean_pairwise_distance: float = Field(ge=0, description="in sketch space, over the reference rows")
    diversity_reference: float = Field(gt=0, description="mean pairwise distance of standardised rows")
    pixel_shape: list[int]
    pixel_mean: list[float]
    pixel_std: list[float]
    bands: list[WindowBand] = Field(min_length=1)
    computed_at: datetime
    command: str | None = None
    wall_time_s: float = Field(ge=0)

    def check(self, num_classes: int, output_shape: list[int]) -> None:
        """ValueError unless the shapes agree with the manifest's model."""
        groups = max(num_classes, 1)
        if len(self.mean) != groups or len(self.std) != groups:
            raise ValueError(f"output_reference has {len(self.mean)} groups; the model has {groups}")
        if any(len(row) != self.directions for row in [*self.mean, *self.std]):
            raise ValueError(f"output_reference mean/std rows must have {self.directions} entries")
        if any(v <= 0 for row in self.std for v in row):
            raise ValueError("output_reference std entries must be > 0")
        if self.sketch_shape != pooled_shape(output_shape, SKETCH_SIDE):
            raise ValueError(
                f"output_reference sketch_shape {self.sketch_shape} disagrees with {output_shape}"
            )
        if self.pixel_shape != pooled_shape(output_shape, PIXEL_SIDE):
            raise ValueError(f"output_reference pixel_shape {self.pixel_shape} disagrees with {output_shape}")
        if len(self.pixel_mean) != math.prod(self.pixel_shape) or len(self.pixel_std) != len(self.pixel_mean):
            raise ValueError(
                f"output_reference pixel_mean/pixel_std must have {math.prod(self.pixel_shape)} entries"
            )
        if sorted(b.window for b in self.bands) != [b.window for b in self.bands]:
            raise ValueError("output_reference bands must be in increasing window order")

    def band(self, window: int) -> WindowBand | None:
        """The band of the largest measured window <= `window` (a wider band than its own: conservative)."""
        fitting = [b for b in self.bands if b.window <= window]
        return fitting[-1] if fitting else None
