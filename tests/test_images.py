"""Uploaded images: what is read, converted or refused, and that the refusal names the field and the limit."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from service.images import ImageError, decode_image, decode_images, from_base64


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


GREY = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4


def test_grey_png_maps_to_minus_one_one_and_copies_into_rgb() -> None:
    x = decode_image(encoded(Image.fromarray(GREY)), "images[0]", [1, 8, 8])
    assert x.shape == (1, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], GREY / 127.5 - 1.0, atol=1e-6)
    rgb = decode_image(encoded(Image.fromarray(GREY)), "images[0]", [3, 8, 8])
    assert rgb.shape == (3, 8, 8) and (rgb[0] == rgb[1]).all() and (rgb[1] == rgb[2]).all()


def test_modes_are_converted_not_refused() -> None:
    wide = Image.fromarray((GREY.astype(np.uint16) << 8) | 0xFF)  # 16-bit grey: the high byte is kept
    np.testing.assert_allclose(decode_image(encoded(wide), "f", [1, 8, 8])[0], GREY / 127.5 - 1.0, atol=1e-6)
    magenta = decode_image(encoded(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG"), "f", [3, 8, 8])
    np.testing.assert_allclose(magenta[:, 0, 0], [1.0, -1.0, 1.0], atol=0.02)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red: alpha is dropped, the colour kept
    np.testing.assert_allclose(
        decode_image(encoded(Image.fromarray(rgba)), "f", [3, 8, 8])[:, 0, 0], [1, -1, -1]
    )
    palette = Image.fromarray(GREY).convert("P")
    assert decode_image(encoded(palette), "f", [1, 8, 8]).shape == (1, 8, 8)
    red = decode_image(encoded(Image.new("RGB", (8, 8), (255, 0, 0))), "f", [1, 8, 8])
    np.testing.assert_allclose(red, 76 / 127.5 - 1.0, atol=1e-6)  # ITU-R 601 luma of pure red: 76


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"definitely not an image", "not an image: send PNG or JPEG"),
        (encoded(Image.new("L", (8, 8)), "GIF"), "GIF images are not accepted: send PNG or JPEG"),
        (encoded(Image.new("RGB", (8, 8)), "BMP"), "BMP images are not accepted"),
        (
            encoded(Image.new("L", (8, 8)), save_all=True, append_images=[Image.new("L", (8, 8), 99)]),
            "animated PNG with 2 frames",
        ),
        (encoded(Image.new("L", (8, 9))), "image is 9x8 (HxW); the model takes 8x8"),
        (
            encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))[:2000],
            "truncated",
        ),
    ],
    ids=["junk", "gif", "bmp", "apng", "size", "truncated"],
)
def test_refusals_name_the_image_and_the_reason(data: bytes, message: str) -> None:
    shape = [1, 64, 64] if message == "truncated" else [1, 8, 8]
    with pytest.raises(ImageError, match=re.escape(message)) as error:
        decode_images(
            [encoded(Image.new("L", tuple(shape[1:]))), data], shape, resize=False, max_pixels=1 << 20
        )
    assert error.value.field == "images[1]"


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = encoded(Image.new("L", (3000, 3000)))  # 9 Mpixels of zeros compress to a few kB
    assert len(bomb) < 50_000
    with pytest.raises(
        ImageError, match=r"declares 3000x3000 = 9000000 pixels; at most 1048576 \(GAN_MAX_IMAGE_PIXELS\)"
    ):
        decode_image(bomb, "images[0]", [1, 8, 8], max_pixels=1 << 20)


def test_resize_only_when_asked() -> None:
    big = encoded(Image.new("L", (16, 16), 255))
    with pytest.raises(ImageError, match="set resize to true"):
        decode_image(big, "f", [1, 8, 8])
    np.testing.assert_allclose(decode_image(big, "f", [1, 8, 8], resize=True), 1.0, atol=1e-6)


def test_base64_must_be_valid() -> None:
    data = encoded(Image.fromarray(GREY))
    assert from_base64(base64.b64encode(data).decode(), "images[0]") == data
    with pytest.raises(ImageError, match="not valid base64") as error:
        from_base64("!!not base64!!", "images[3]")
    assert error.value.field == "images[3]"
