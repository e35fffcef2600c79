"""Turning generator output into bytes: uint8 images, PNG, .npy and .npz."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def to_uint8_nhwc(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8, rounding to the nearest level."""
    pixels = np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


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


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # uncompressed: generated images compress poorly and zlib costs CPU per row
    return buffer.getvalue()
