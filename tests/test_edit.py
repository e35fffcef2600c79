"""POST /edit and /augment's variations_of, against raw ONNX Runtime on the same files.

The encoders here are tiny real ONNX graphs built with onnx.helper (linear maps), beside generators exported
from tiny trained runs: the service's part (decode, batch, edit, decode again, encode, provenance) is what is
tested; trained encoders have their own tests.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.files import sha256_file
from service.latents import sample_latent, slerp
from service.main import create_app
from service.settings import Settings
from tests.support import add_encoder, tiny_config

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def edit_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`digits` (conditional) and `plain` (unconditional DCGAN) with encoders; `ring` without one."""
    from training.export import export
    from training.loop import train

    root = tmp_path_factory.mktemp("edit-models")
    shutil.copytree(model_dir, root, dirs_exist_ok=True)
    run = tmp_path_factory.mktemp("plain-run")
    train(tiny_config("dcgan", data="digits", steps=2), run, progress=False)
    export(run, root, "plain")
    add_encoder(root / "digits" / "1")
    z_dim = json.loads((root / "plain" / "1" / "manifest.json").read_text())["z_dim"]
    unit = np.eye(z_dim, dtype=np.float32)[0]
    add_encoder(root / "plain" / "1", [{"name": "digit-7", "vector": unit.tolist(), "strength": 2.0,
                                        "target": "7", "method": "test"}])  # fmt: skip
    return root


@pytest.fixture(scope="module")
def client(edit_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=edit_dir, max_edit_images=4))) as test_client:
        yield test_client


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = [png(RNG.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(3)]
B64 = [base64.b64encode(image).decode() for image in IMAGES]


def raw(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(a) for a in session.run(None, feeds)]


def pixels_in(images: list[bytes]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(i)), np.float32)[None] / 127.5 - 1 for i in images])


def npy(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def test_reconstruct_json_and_multipart_agree_with_raw_onnx_runtime(
    client: TestClient, edit_dir: Path
) -> None:
    body = {"model": "digits", "images": B64, "labels": [1, "2", 3], "format": "npy"}
    by_json = client.post("/edit", json=body)
    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(IMAGES)]
    form = {"model": "digits", "labels": ["1", "2", "3"], "format": "npy"}
    by_form = client.post("/edit", data=form, files=files)
    assert by_json.content == by_form.content and by_json.headers["x-edit"] == "reconstruct"
    version = edit_dir / "digits" / "1"
    c = np.eye(10, dtype=np.float32)[[1, 2, 3]]
    z, _ = raw(version / "encoder.onnx", {"x": pixels_in(IMAGES), "c": c})
    (x,) = raw(version / "model.onnx", {"z": z, "c": c})
    np.testing.assert_array_equal(npy(by_json), to_uint8(x))
    assert by_json.headers["x-encoder-sha256"] == sha256_file(version / "encoder.onnx")
    assert client.post("/edit", json=body).content == by_json.content  # same image, same edit: same bytes


def test_label_edit_keeps_z_and_predicts_the_source_class(client: TestClient, edit_dir: Path) -> None:
    body = {
        "model": "digits",
        "images": B64[:2],
        "edit": {"label": 5},
        "return_latents": True,
        "format": "json",
    }
    answer = client.post("/edit", json=body).json()
    version = edit_dir / "digits" / "1"
    z, logits = raw(
        version / "encoder.onnx", {"x": pixels_in(IMAGES[:2]), "c": np.zeros((2, 10), np.float32)}
    )
    np.testing.assert_allclose(
        answer["latents"], z, rtol=1e-5, atol=1e-5
    )  # no label given: c unknown (zeros)
    (x,) = raw(version / "model.onnx", {"z": z, "c": np.eye(10, dtype=np.float32)[[5, 5]]})
    np.testing.assert_allclose(np.array(answer["data"]), x.reshape(2, -1), atol=1e-5)
    assert answer["labels"] == [5, 5] and answer["edit"] == {"operation": "label", "label": 5}
    rebuilt = client.post("/edit", json=body | {"edit": None, "format": "json"}).json()
    assert rebuilt["labels"] == logits.argmax(1).tolist()  # reconstruct keeps the predicted class


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"direction": "digit-7"}, lambda z: z + 2.0 * np.eye(z.shape[1], dtype=np.float32)[0]),
        (
            {"direction": "digit-7", "strength": -1.5},
            lambda z: z - 1.5 * np.eye(z.shape[1], dtype=np.float32)[0],
        ),
        ({"truncation": 0.5}, lambda z: 0.5 * z),
        (
            {"mix_seed": 9, "t": 0.25},
            lambda z: np.stack([slerp(r, sample_latent(9, 0, z.shape[1]), np.array([0.25]))[0] for r in z]),
        ),
    ],
    ids=["direction", "direction-strength", "truncation", "mix"],
)
def test_latent_edits_of_an_unconditional_model(
    client: TestClient, edit_dir: Path, edit: dict, expected: Any
) -> None:
    body = {"model": "plain", "images": B64, "edit": edit, "format": "npy"}
    version = edit_dir / "plain" / "1"
    (z,) = raw(version / "encoder.onnx", {"x": pixels_in(IMAGES)})
    (x,) = raw(version / "model.onnx", {"z": expected(z).astype(np.float32)})
    np.testing.assert_array_equal(npy(client.post("/edit", json=body)), to_uint8(x))


def test_variations_keep_the_class_of_each_real_image(client: TestClient, edit_dir: Path) -> None:
    spec = {"images": B64[:2], "labels": [4, 6], "sigma": 0.5, "per_image": 3}
    body = {"model": "digits", "variations_of": spec, "seed": 11, "format": "npz"}
    whole = np.load(io.BytesIO(client.post("/augment", json=body).content))
    assert whole["y"].tolist() == [4, 4, 4, 6, 6, 6] and whole["index"].tolist() == list(range(6))
    page = np.load(io.BytesIO(client.post("/augment", json=body | {"offset": 2, "limit": 3}).content))
    np.testing.assert_array_equal(page["x"], whole["x"][2:5])  # any paging gives the same rows
    version = edit_dir / "digits" / "1"
    c = np.eye(10, dtype=np.float32)[[4, 6]]
    z, _ = raw(version / "encoder.onnx", {"x": pixels_in(IMAGES[:2]), "c": c})
    eps = np.stack([sample_latent(11, j, z.shape[1]) for j in range(6)])
    (x,) = raw(
        version / "model.onnx",
        {"z": (z[[0, 0, 0, 1, 1, 1]] + 0.5 * eps).astype(np.float32), "c": c[[0, 0, 0, 1, 1, 1]]},
    )
    np.testing.assert_array_equal(whole["x"], to_uint8(x))


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("body", "status", "field", "detail"),
    [
        ({"model": "digits", "images": [b64(b"nope")]}, 422, "images[0]", "not an image"),
        (
            {"model": "digits", "images": [B64[0], b64(gif())]},
            422,
            "images[1]",
            "GIF images are not accepted",
        ),
        ({"model": "digits", "images": ["%%%"]}, 422, "images[0]", "not valid base64"),
        (
            {"model": "digits", "images": [b64(png(np.zeros((9, 8), np.uint8)))]},
            422,
            "images[0]",
            "takes 8x8",
        ),
        ({"model": "digits", "images": B64 * 2}, 422, "images", "images must be <= 4 (GAN_MAX_EDIT_IMAGES)"),
        (
            {"model": "digits", "images": B64, "labels": [1]},
            422,
            "labels",
            "labels has 1 entries but there are 3",
        ),
        (
            {"model": "digits", "images": B64, "edit": {"label": "hat"}},
            422,
            "edit.label",
            "unknown class 'hat'",
        ),
        ({"model": "plain", "images": B64, "edit": {"label": 1}}, 422, "edit.label", "unconditional"),
        ({"model": "plain", "images": B64, "edit": {"direction": "x"}}, 422, "edit.direction", "['digit-7']"),
        (
            {"model": "digits", "images": B64, "edit": {"label": 1, "truncation": 0.5}},
            422,
            "edit",
            "exactly one",
        ),
        ({"model": "ring", "images": B64}, 409, "model", "has no encoder"),
        ({"model": "nope", "images": B64}, 404, "model", "not found"),
    ],
)
def test_bad_input_names_the_field_and_the_limit(
    client: TestClient, body: dict, status: int, field: str, detail: str
) -> None:
    answer = client.post("/edit", json=body)
    assert (answer.status_code, answer.json()["field"]) == (status, field), answer.text
    assert detail in answer.json()["detail"]


def test_resize_and_colour_conversion_on_request(client: TestClient) -> None:
    rgb = png(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert client.post("/edit", json={"model": "digits", "images": [b64(rgb)]}).status_code == 422
    answer = client.post("/edit", json={"model": "digits", "images": [b64(rgb)], "resize": True})
    assert answer.status_code == 200 and len(answer.json()["images"]) == 1


def test_multipart_bad_forms(client: TestClient) -> None:
    no_image = client.post("/edit", files={"model": (None, "digits")})  # multipart, one text field
    assert no_image.status_code == 422 and no_image.json()["field"] == "image"
    other_file = client.post("/edit", data={"model": "digits"}, files={"other": ("a.txt", b"x")})
    assert other_file.status_code == 422 and other_file.json()["field"] == "other"  # not a field of /edit
    text_image = client.post(
        "/edit", data={"model": "digits", "image": "not a file"}, files={"x": ("a", b"")}
    )
    assert text_image.status_code == 422 and text_image.json()["field"] == "image"
    unknown = client.post(
        "/edit", data={"model": "digits", "colour": "red"}, files={"image": ("a.png", IMAGES[0])}
    )
    assert unknown.status_code == 422 and unknown.json()["field"] == "colour"


def test_a_body_over_the_limit_is_refused_before_decoding(edit_dir: Path) -> None:
    with TestClient(create_app(Settings(model_dir=edit_dir, max_body_bytes=2048))) as small:
        answer = small.post("/edit", files={"image": ("a.png", b"\0" * 4096)}, data={"model": "digits"})
    assert answer.status_code == 413 and answer.json()["field"] == "body"


def test_a_bad_encoder_fails_editing_only(edit_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(edit_dir, tmp_path / "models")
    for name, encoder_sha256 in (("digits", "0" * 64), ("plain", None)):  # the generators pass a gate
        manifest_path = tmp_path / "models" / name / "1" / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest |= {"metrics": {"m": 1.0}, "gates": [{"metric": "m", "op": ">=", "threshold": 0.0}]}
        if encoder_sha256:
            manifest["encoder"]["sha256"] = encoder_sha256
        manifest_path.write_text(json.dumps(manifest))
    failing_gate = tmp_path / "models" / "plain" / "1"
    add_encoder(failing_gate, metrics={"psnr": 12.0})
    with TestClient(create_app(Settings(model_dir=tmp_path / "models", quality_gate="enforce"))) as guarded:
        assert guarded.post("/generate", json={"model": "digits", "n": 2}).status_code == 200
        refused = guarded.post("/edit", json={"model": "digits", "images": B64})
        assert refused.status_code == 409 and "sha256 of encoder.onnx is" in refused.json()["detail"]
        gated = guarded.post("/edit", json={"model": "plain", "images": B64})
        assert (
            gated.status_code == 409
            and "encoder quality gate: psnr = 12.0 fails >= 20" in gated.json()["detail"]
        )
        listed = {v["version"]: v for v in guarded.get("/models/digits").json()["versions"]}
        assert listed[1]["status"] == "ready" and "sha256" in listed[1]["editing"]["reason"]


def test_editing_defaults_to_the_newest_version_with_an_encoder(edit_dir: Path, tmp_path: Path) -> None:
    """A newer generator can ship before its encoder: /edit and variations_of without a version use the newest
    version that can encode; generation uses the newest; the newer version asked by number says why not."""
    shutil.copytree(edit_dir, tmp_path / "models")
    newer = tmp_path / "models" / "digits" / "2"
    shutil.copytree(tmp_path / "models" / "digits" / "1", newer)
    (newer / "encoder.onnx").unlink()
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest.pop("encoder")
    manifest |= {"version": 2, "directions": []}
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with TestClient(create_app(Settings(model_dir=tmp_path / "models"))) as two:
        assert two.post("/generate", json={"model": "digits", "n": 1}).headers["X-Model-Version"] == "2"
        edited = two.post("/edit", json={"model": "digits", "images": B64, "format": "npy"})
        assert edited.status_code == 200 and edited.headers["X-Model-Version"] == "1"
        varied = two.post(
            "/augment",
            json={"model": "digits", "variations_of": {"images": B64[:1], "per_image": 2}, "format": "npz"},
        )
        assert varied.status_code == 200 and varied.headers["X-Model-Version"] == "1"
        refused = two.post("/edit", json={"model": "digits", "version": 2, "images": B64})
        assert refused.status_code == 409 and "encoder" in refused.json()["detail"]
