"""Uploaded images to encoder input: PNG or JPEG bytes -> float32 (C, H, W) in [-1, 1], checked before decoding.

Rules, in order (each refusal names the image's field and the limit):
- Only PNG and JPEG are read; anything else (GIF, WebP, BMP, TIFF, bytes that are no image) is refused.
- The declared size is checked against `max_pixels` before a pixel is decoded: a decompression bomb (a small
  file that declares a huge image) is refused from its header alone.
- An animated PNG is refused: which of its frames is meant is the client's choice, not ours.
- Modes are converted, never refused: 16-bit grey is scaled to 8 bits (the high byte), palette images are
  expanded, CMYK becomes RGB, and an alpha channel is dropped (the colour channels are kept as they are).
- Channels follow the model: a grey model gets the ITU-R 601 luma of a colour image (Pillow's `L`), a colour
  model gets a grey image copied into R, G and B.
- The size must be the model's H x W unless `resize` is true; then the image is resized (Lanczos) to it.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.plans import PlanError

FORMATS = ("PNG", "JPEG")


class ImageError(PlanError):
    """An uploaded image that cannot be used: not an image, a refused format, too large, or the wrong size."""


def from_base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(
            "not valid base64: send the PNG or JPEG file's bytes base64-encoded", field
        ) from None


def _format_name(data: bytes) -> str:
    """What a refused upload is, for the message: another image format by name, or not an image at all."""
    try:
        with Image.open(io.BytesIO(data)) as other:  # the header only: nothing is decoded
            return f"{other.format} images are not accepted"
    except Exception:  # Pillow raises many types for bytes that are no image
        return "not an image"


def _open(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """The image with its header read and checked, and its pixels decoded only then."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except UnidentifiedImageError:
        raise ImageError(f"{_format_name(data)}: send PNG or JPEG", field) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"image declares more than {Image.MAX_IMAGE_PIXELS} pixels; at most {max_pixels} (GAN_MAX_IMAGE_PIXELS)",
            field,
        ) from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image declares {width}x{height} = {width * height} pixels; at most {max_pixels} "
            "(GAN_MAX_IMAGE_PIXELS)",
            field,
        )
    frames = int(getattr(image, "n_frames", 1))
    if frames > 1:
        raise ImageError(f"animated {image.format} with {frames} frames: send one still image", field)
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as error:  # truncated or corrupt data behind a valid header
        raise ImageError(f"cannot decode the {image.format} image: {error}", field) from None
    return image


def _eight_bit(image: Image.Image) -> Image.Image:
    """L or RGB, 8 bits per channel (see the module's rules)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.uint32)
        return Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("LA", "La") or (image.mode == "P" and image.palette and image.palette.mode == "L"):
        return image.convert("L")
    return image.convert("RGB")  # P, PA, RGBA, RGBa, CMYK, YCbCr, 1, F ...


def decode_image(
    data: bytes, field: str, shape: list[int], *, resize: bool = False, max_pixels: int = 1 << 22
) -> np.ndarray:
    """One image as float32 (C, H, W) in [-1, 1] for a model whose samples have `shape` = [C, H, W]."""
    channels, height, width = shape
    image = _eight_bit(_open(data, field, max_pixels)).convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        if not resize:
            raise ImageError(
                f"image is {image.size[1]}x{image.size[0]} (HxW); the model takes {height}x{width}: "
                "send that size or set resize to true",
                field,
            )
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)  # (C, H, W)
    out: np.ndarray = pixels / 127.5 - 1.0
    return out.astype(np.float32)


def decode_images(
    images: list[bytes], shape: list[int], *, resize: bool, max_pixels: int, field: str = "images"
) -> np.ndarray:
    """(N, C, H, W) float32; errors name `images[i]`."""
    return np.stack(
        [
            decode_image(data, f"{field}[{i}]", shape, resize=resize, max_pixels=max_pixels)
            for i, data in enumerate(images)
        ]
    )
