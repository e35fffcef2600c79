"""Every PNG the service writes carries its provenance (tEXt chunks) and the IPTC marking (XMP) inside the file.

Chunks are read twice: by the PNG spec with the stdlib (order, CRC, before IDAT) and by Pillow (the text).
"""

from __future__ import annotations

import base64
import io
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import encoding
from service.files import sha256_file
from service.main import create_app
from service.settings import Settings
from tests.support import add_encoder

IPTC_EXT = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def png_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("png-models")
    shutil.copytree(model_dir, root, dirs_exist_ok=True)
    add_encoder(root / "digits" / "1")
    return root


@pytest.fixture(scope="module")
def clients(png_dir: Path) -> Iterator[dict[bool, TestClient]]:
    with (
        TestClient(create_app(Settings(model_dir=png_dir))) as on,
        TestClient(create_app(Settings(model_dir=png_dir, png_provenance=False))) as off,
    ):
        yield {True: on, False: off}


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, by the PNG spec: length, type, data, CRC-32 of type + data."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, payload = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + payload), kind
        found.append((kind, payload))
        at += 12 + length
    assert at == len(data) and found[-1][0] == b"IEND"
    return found


def text_of(data: bytes) -> dict[str, str]:
    """The text chunks, which must all come between IHDR and the first IDAT."""
    kinds = [kind for kind, _ in chunks(data)]
    texts = [i for i, kind in enumerate(kinds) if kind in (b"tEXt", b"iTXt", b"zTXt")]
    assert kinds[0] == b"IHDR" and all(i < kinds.index(b"IDAT") for i in texts)
    with Image.open(io.BytesIO(data)) as image:
        return dict(image.text)  # type: ignore[attr-defined]


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def digital_source_type(xmp: str) -> str:
    assert xmp.startswith('<?xpacket begin="\ufeff"') and xmp.endswith('<?xpacket end="r"?>')
    description = ElementTree.fromstring(xmp).find(f".//{RDF}Description")
    assert description is not None and description.get(f"{RDF}about") == ""
    value = description.get(f"{IPTC_EXT}DigitalSourceType")
    assert value is not None
    return value


def pngs(response: Any) -> list[bytes]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["format"] == "png"
    return [base64.b64decode(image) for image in body["images"]]


def onnx_sha256(png_dir: Path) -> str:
    return sha256_file(png_dir / "digits" / "1" / "model.onnx")


def check_common(text: dict[str, str], png_dir: Path) -> None:
    assert text["Software"] == encoding.SOFTWARE and text["Software"].startswith("gan-serving")
    assert (text["gan:model"], text["gan:version"]) == ("digits", "1")
    assert text["gan:onnx_sha256"] == onnx_sha256(png_dir)
    assert digital_source_type(text["XML:com.adobe.xmp"]) == TRAINED


def test_generate_pngs_carry_every_key_and_the_iptc_marking(
    clients: dict[bool, TestClient], png_dir: Path
) -> None:
    body = {"model": "digits", "n": 3, "seed": 11, "offset": 4, "labels": [7, "2", 0]}
    images = pngs(clients[True].post("/generate", json=body))
    names = clients[True].get("/models/digits").json()["versions"][0]["manifest"]["class_names"]
    for i, data in enumerate(images):
        text = text_of(data)
        check_common(text, png_dir)
        assert (text["gan:seed"], text["gan:index"]) == ("11", str(4 + i))
        assert text["gan:label"] == str([7, 2, 0][i]) and text["gan:class_name"] == names[[7, 2, 0][i]]
        assert "gan:encoder_sha256" not in text and "gan:edit" not in text


def test_augment_png_pages_carry_the_row_of_the_set(clients: dict[bool, TestClient], png_dir: Path) -> None:
    body = {
        "model": "digits",
        "per_class": {"3": 2, "5": 3},
        "seed": 9,
        "offset": 1,
        "limit": 3,
        "format": "png",
    }
    response = clients[True].post("/augment", json=body)
    assert response.json()["indices"] == [1, 2, 3]
    texts = [text_of(data) for data in pngs(response)]
    for text in texts:
        check_common(text, png_dir)
    assert [(t["gan:seed"], t["gan:index"], t["gan:label"]) for t in texts] == [
        ("9", "1", "3"),
        ("9", "2", "5"),
        ("9", "3", "5"),
    ]


def test_edit_pngs_name_the_encoder_and_the_operation(clients: dict[bool, TestClient], png_dir: Path) -> None:
    image = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(image, format="PNG")
    sent = base64.b64encode(image.getvalue()).decode()
    body = {"model": "digits", "images": [sent, sent], "labels": 1, "edit": {"label": "4"}}
    response = clients[True].post("/edit", json=body)
    for i, data in enumerate(pngs(response)):
        text = text_of(data)
        check_common(text, png_dir)
        assert text["gan:encoder_sha256"] == sha256_file(png_dir / "digits" / "1" / "encoder.onnx")
        assert (text["gan:edit"], text["gan:index"], text["gan:label"]) == ("label", str(i), "4")
        assert "gan:seed" not in text  # an edit has no seed: its latents come from the image


def test_interpolate_pngs_carry_their_place_on_the_path(clients: dict[bool, TestClient]) -> None:
    body = {"model": "digits", "start": {"seed": 1, "label": 0}, "end": {"seed": 2, "label": 9}, "steps": 3}
    texts = [text_of(data) for data in pngs(clients[True].post("/interpolate", json=body))]
    assert [(t["gan:index"], t["gan:t"]) for t in texts] == [("0", "0.0"), ("1", "0.5"), ("2", "1.0")]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate", {"model": "digits", "n": 4, "seed": 5}),
        (
            "/augment",
            {"model": "digits", "per_class": {"1": 2, "8": 2}, "seed": 2, "format": "png", "limit": 4},
        ),
        (
            "/interpolate",
            {"model": "digits", "start": {"seed": 1, "label": 3}, "end": {"seed": 2, "label": 3}},
        ),
    ],
)
def test_same_request_same_bytes_and_switching_off_leaves_the_pixels(
    clients: dict[bool, TestClient], path: str, body: dict[str, Any]
) -> None:
    on, again = clients[True].post(path, json=body), clients[True].post(path, json=body)
    assert on.content == again.content  # no timestamps: the same request gives the same bytes
    off = clients[False].post(path, json=body)
    assert off.content == clients[False].post(path, json=body).content
    with_text, bare = pngs(on), pngs(off)
    for marked, plain in zip(with_text, bare, strict=True):
        np.testing.assert_array_equal(pixels(marked), pixels(plain))
        assert [kind for kind, _ in chunks(plain)] == [b"IHDR", b"IDAT", b"IEND"]
        assert text_of(plain) == {}
        # the marked file is the bare one with the text chunks inserted after IHDR
        kept = [c for c in chunks(marked) if c[0] not in (b"tEXt", b"iTXt")]
        assert kept == chunks(plain)


def test_switched_off_edit_pngs_have_no_chunks(clients: dict[bool, TestClient]) -> None:
    image = io.BytesIO()
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(image, format="PNG")
    body = {"model": "digits", "images": [base64.b64encode(image.getvalue()).decode()]}
    (marked,), (plain,) = (pngs(clients[flag].post("/edit", json=body)) for flag in (True, False))
    assert text_of(plain) == {} and "gan:edit" in text_of(marked)
    np.testing.assert_array_equal(pixels(marked), pixels(plain))


def test_the_setting_reads_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().png_provenance is True
    monkeypatch.setenv("GAN_PNG_PROVENANCE", "false")
    assert Settings().png_provenance is False


# --- the pure function other writers (data set shards) call ---


@pytest.mark.parametrize("channels", [1, 3])
def test_png_bytes_with_and_without_provenance(channels: int) -> None:
    image = RNG.integers(0, 256, (28, 28, channels), dtype=np.uint8)
    text = encoding.sample_provenance("m", 2, "ab" * 32, 17, seed=5, label=3, class_name="Dress", edit="mix")
    assert list(text) == ["gan:model", "gan:version", "gan:onnx_sha256", "gan:seed", "gan:index", "gan:label",
                          "gan:class_name", "gan:edit"]  # fmt: skip
    marked, plain = encoding.png_bytes(image, text), encoding.png_bytes(image)
    assert marked == encoding.png_bytes(image, dict(text)) and plain == encoding.png_bytes(image, None)
    read = text_of(marked)
    assert read == {"Software": encoding.SOFTWARE} | text | {"XML:com.adobe.xmp": encoding.XMP_PACKET}
    assert text_of(plain) == {}
    expected = image[:, :, 0] if channels == 1 else image
    np.testing.assert_array_equal(pixels(marked), expected)
    np.testing.assert_array_equal(pixels(plain), expected)
    # an empty mapping still marks the file: Software and the XMP
    assert set(text_of(encoding.png_bytes(image, {}))) == {"Software", "XML:com.adobe.xmp"}


def test_text_that_is_not_latin_1_goes_into_itxt() -> None:
    data = encoding.png_bytes(np.zeros((2, 2, 1), np.uint8), {"gan:class_name": "猫", "gan:index": "0"})
    kinds = [kind for kind, _ in chunks(data)]
    assert kinds == [b"IHDR", b"iTXt", b"tEXt", b"iTXt", b"tEXt", b"IDAT", b"IEND"]  # XMP first, as XMP asks
    assert text_of(data)["gan:class_name"] == "猫"
