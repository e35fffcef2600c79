"""Data sources: images as float tensors in [-1, 1], 2-D mixtures in their own coordinates, integer labels.

A batch is a pure function of (seed, step): finite sets are walked in per-epoch permutations derived from
the seed, infinite ones (mixtures, stacked MNIST) are sampled from a generator seeded by (seed, step).
That makes `--resume` exact without saving any data-loader state. Under torchrun each rank takes its `part`
(a slice) of that same global batch, so the data seen does not depend on the number of ranks. The files they read are read by readers.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from training.readers import DataError, Split, mnist_arrays, read_folder, read_idx_pair, read_npz

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))
BUILTIN = ("ring8", "grid25", "gauss2", "fashion-mnist", "mnist", "stacked-mnist", "digits")
SOURCES = (*BUILTIN, "folder", "npz")
Kind = Literal["image", "vector"]


@dataclass(frozen=True)
class DataSpec:
    name: str
    kind: Kind
    shape: tuple[int, ...]  # one sample: (C, H, W) or (D,)
    num_classes: int
    class_names: tuple[str, ...]

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> DataSpec:
        """A checkpoint's `data_spec` dict (JSON-like: tuples may come back as lists)."""
        return cls(**{**saved, "shape": tuple(saved["shape"]), "class_names": tuple(saved["class_names"])})


def step_seed(seed: int, step: int) -> int:
    """The seed of one training step's random draws: a pure function of (run seed, step), so resume is exact."""
    return seed * 1_000_003 + step


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step) % (1 << 63))


ALL = slice(None)


class Source:
    """A data source: `batch(step, batch_size, part)` returns (x, y or None) on the CPU: the samples `part`
    of the global batch `step` of `batch_size` samples (all of it by default)."""

    spec: DataSpec
    seed: int = 0

    def batch(
        self, step: int, batch_size: int, part: slice = ALL
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class TensorSource(Source):
    """A finite set held in memory; uint8 images are scaled to [-1, 1] per batch."""

    def __init__(self, spec: DataSpec, x: torch.Tensor, y: torch.Tensor | None, seed: int = 0) -> None:
        if y is not None and len(y) != len(x):
            raise DataError(f"{spec.name}: {len(x)} samples but {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{spec.name}: the data set is empty")
        self.spec, self.x, self.y, self.seed = spec, x, y, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.x)

    def batch(
        self, step: int, batch_size: int, part: slice = ALL
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if batch_size > len(self.x):
            raise DataError(f"{self.spec.name}: batch_size {batch_size} exceeds the {len(self.x)} samples")
        per_epoch = len(self.x) // batch_size  # the last partial batch of an epoch is dropped
        epoch, offset = divmod(step, per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed((self.seed * 7919 + epoch) % (1 << 63))
            self._epoch, self._perm = epoch, torch.randperm(len(self.x), generator=gen)
        index = self._perm[offset * batch_size : (offset + 1) * batch_size][part]
        return to_float(self.x[index]), None if self.y is None else self.y[index]


class MixtureSource(Source):
    """Isotropic Gaussian mixture with uniform weights, sampled on the fly; label = component index."""

    def __init__(self, spec: DataSpec, means: torch.Tensor, sigma: float, seed: int = 0) -> None:
        self.spec, self.means, self.sigma, self.seed = spec, means, sigma, seed

    def __len__(self) -> int:
        return 100_000  # PacGAN's pool size; only used to turn --epochs into steps

    def batch(self, step: int, batch_size: int, part: slice = ALL) -> tuple[torch.Tensor, torch.Tensor]:
        gen = _step_generator(self.seed, step)
        y = torch.randint(len(self.means), (batch_size,), generator=gen)
        x = self.means[y] + self.sigma * torch.randn(batch_size, 2, generator=gen)
        return x[part], y[part]


class StackedSource(Source):
    """Stacked MNIST: three independently drawn digits as the channels; label = 100a + 10b + c."""

    def __init__(self, spec: DataSpec, digits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> None:
        self.spec, self.digits, self.labels, self.seed = spec, digits, labels, seed

    def __len__(self) -> int:
        return 128_000  # the VEEGAN/PacGAN set size; only used to turn --epochs into steps

    def batch(self, step: int, batch_size: int, part: slice = ALL) -> tuple[torch.Tensor, torch.Tensor]:
        gen = _step_generator(self.seed, step)
        index = torch.randint(len(self.digits), (batch_size, 3), generator=gen)[part]
        x = self.digits[index].squeeze(2)  # (N, 3, 28, 28): one digit per channel
        y = (self.labels[index] * torch.tensor([100, 10, 1])).sum(1)
        return to_float(x), y


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(127.5).sub_(1.0) if x.dtype == torch.uint8 else x.float()


# --- 2-D mixtures (../shared/REFERENCE.md §1.1) -------------------------------------------------------


def ring8_means() -> torch.Tensor:
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8  # 2πk/8: no duplicated endpoint
    return torch.stack([torch.cos(angles), torch.sin(angles)], 1).float()


def grid25_means() -> torch.Tensor:
    axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    return torch.cartesian_prod(axis, axis)


def gauss2_means() -> torch.Tensor:
    """The seeds' worked example: two unit-variance Gaussians at (-2, -2) and (2, 2), equal weights."""
    return torch.tensor([[-2.0, -2.0], [2.0, 2.0]])


MIXTURES = {"ring8": (ring8_means, 0.01), "grid25": (grid25_means, 0.05), "gauss2": (gauss2_means, 1.0)}


# --- the factory -----------------------------------------------------------------------------------------


def builtin_spec(name: str) -> DataSpec:
    if name in MIXTURES:
        k = len(MIXTURES[name][0]())
        return DataSpec(name, "vector", (2,), k, tuple(f"mode {j}" for j in range(k)))
    if name == "fashion-mnist":
        return DataSpec(name, "image", (1, 28, 28), 10, FASHION_CLASSES)
    if name == "mnist":
        return DataSpec(name, "image", (1, 28, 28), 10, DIGIT_CLASSES)
    if name == "stacked-mnist":
        return DataSpec(name, "image", (3, 28, 28), 1000, tuple(f"{k:03d}" for k in range(1000)))
    if name == "digits":
        return DataSpec(name, "image", (1, 8, 8), 10, DIGIT_CLASSES)
    raise DataError(f"unknown data source '{name}'; choose one of {list(SOURCES)}")


def _tensor_source(spec: DataSpec, x: np.ndarray, y: np.ndarray | None, seed: int) -> TensorSource:
    labels = None if y is None else torch.from_numpy(np.array(y))
    return TensorSource(spec, torch.from_numpy(np.array(x)), labels, seed)  # np.array: writable copies


def make_source(
    name: str,
    data_dir: str | None = None,
    *,
    seed: int = 0,
    split: Split = "train",
    image_size: int | None = None,
    channels: int | None = None,
) -> Source:
    """Build the named source; `folder` and `npz` read `data_dir`, the MNIST family may."""
    if name in MIXTURES:
        means_fn, sigma = MIXTURES[name]
        return MixtureSource(builtin_spec(name), means_fn(), sigma, seed)
    if name in ("fashion-mnist", "mnist"):
        if name == "fashion-mnist":
            x, y = read_idx_pair(Path(data_dir) if data_dir else FASHION_MNIST_DIR, split)
        else:
            x, y = mnist_arrays(data_dir, split)
        base = builtin_spec(name)
        spec = DataSpec(name, "image", (1, *x.shape[1:]), base.num_classes, base.class_names)
        return _tensor_source(spec, x[:, None], y, seed)
    if name == "stacked-mnist":
        x, y = mnist_arrays(data_dir, split)
        return StackedSource(
            builtin_spec(name), torch.from_numpy(x[:, None].copy()), torch.from_numpy(y), seed
        )
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # pixel values 0..16 -> [-1, 1]
        return _tensor_source(builtin_spec(name), x, digits.target.astype(np.int64), seed)
    if name in ("folder", "npz"):
        if not data_dir:
            raise DataError(f"data source '{name}' needs --data-dir")
        if name == "folder":
            x, y, classes = read_folder(Path(data_dir), image_size, channels)
        else:
            x, y = read_npz(Path(data_dir))
            classes = tuple(str(k) for k in range(int(y.max()) + 1)) if y is not None and len(y) else ()
        kind: Kind = "image" if x.ndim == 4 else "vector"
        spec = DataSpec(name, kind, tuple(x.shape[1:]), len(classes), classes)
        return _tensor_source(spec, x, y, seed)
    raise DataError(f"unknown data source '{name}'; choose one of {list(SOURCES)}")


class FakeSource(Source):
    """Random data of a built-in source's shape: `--dry-run` exercises everything but the files."""

    def __init__(self, spec: DataSpec, seed: int = 0) -> None:
        self.spec, self.seed = spec, seed

    def __len__(self) -> int:
        return 1024

    def batch(
        self, step: int, batch_size: int, part: slice = ALL
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        gen = _step_generator(self.seed, step)
        x = torch.rand(batch_size, *self.spec.shape, generator=gen) * 2 - 1
        y = (
            torch.randint(self.spec.num_classes, (batch_size,), generator=gen)
            if self.spec.num_classes
            else None
        )
        return x[part], None if y is None else y[part]
