"""Turning generator output into bytes: uint8 images, PNG, .npy and .npz."""

from __future__ import annotations

import base64
import functools
import io

import numpy as np
from PIL import Image


def to_uint8_nhwc(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8, rounding to the nearest level."""
    # In place on one temporary, with ufuncs: np.clip's Python wrapper alone costs more than a small image.
    y = np.maximum(x, -1.0, dtype=np.float32)
    np.minimum(y, 1.0, out=y)
    y += 1.0
    y *= 127.5
    np.rint(y, out=y)
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1)).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """One (H, W, C) uint8 image as PNG; grey for C = 1, RGB for C = 3."""
    buffer = io.BytesIO()
    mode = "L" if image.shape[2] == 1 else "RGB"
    Image.fromarray(image[:, :, 0] if mode == "L" else image, mode).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


def png_base64(images: np.ndarray) -> list[str]:
    return [base64.b64encode(png_bytes(image)).decode("ascii") for image in images]


@functools.lru_cache(maxsize=256)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """.npy (format 1.0) of a C-contiguous array: a cached header plus the raw bytes."""
    array = np.ascontiguousarray(array)
    return _npy_header(array.dtype.str, array.shape) + array.tobytes()  # plain dtypes: descr == dtype.str


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # uncompressed: generated images compress poorly and zlib costs CPU per row
    return buffer.getvalue()
