from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import runtime
from service.files import sha256_file
from service.main import create_app
from service.settings import BUNDLED_MODELS, Settings
from tests.support import session_provider


def corrupt_truncated(path: Path) -> None:
    onnx = path / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["onnx_sha256"] = sha256_file(onnx)  # a consistent hash, so the graph itself is what fails
    (path / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(**changes: object) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        manifest = json.loads((path / "manifest.json").read_text())
        manifest.update(changes)
        if "output_shape" in changes:  # the output reference is shaped by the output: drop it with the shape
            manifest.pop("output_reference", None)
        (path / "manifest.json").write_text(json.dumps(manifest))

    return apply


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated onnx": (corrupt_truncated, "ONNX Runtime cannot load the graph"),
    "wrong sha256": (edit_manifest(onnx_sha256="0" * 64), "sha256 of model.onnx is"),
    "missing manifest": (lambda p: (p / "manifest.json").unlink(), "manifest file is missing"),
    "invalid json": (lambda p: (p / "manifest.json").write_text("{oops"), "not valid JSON"),
    "invalid field": (edit_manifest(z_dim=-1), "field 'z_dim'"),
    "graph disagrees": (edit_manifest(z_dim=9), "z: dims [8] disagree with the manifest's [9]"),
    "output disagrees": (edit_manifest(output_shape=[3]), "x: dims [2] disagree with the manifest's [3]"),
    "wrong name": (edit_manifest(name="other"), "manifest says other:2 but lives in ring:2"),
    "missing onnx": (lambda p: (p / "model.onnx").unlink(), "model.onnx is missing"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_bad_version_fails_alone(case: str, model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(model_dir, tmp_path / "models")
    bad = tmp_path / "models" / "ring" / "2"
    shutil.copytree(tmp_path / "models" / "ring" / "1", bad)
    edit_manifest(version=2)(bad)
    corrupt, reason = CORRUPTIONS[case]
    corrupt(bad)
    with TestClient(create_app(Settings(model_dir=tmp_path / "models"))) as client:
        ring = client.get("/models/ring").json()
        failed = next(v for v in ring["versions"] if v["version"] == 2)
        assert failed["status"] == "failed" and reason in failed["reason"], failed["reason"]
        assert ring["default_version"] == 1  # the highest version that loaded
        assert client.post("/generate", json={"model": "ring", "n": 2}).json()["version"] == 1
        refused = client.post("/generate", json={"model": "ring", "version": 2})
        assert refused.status_code == 503 and reason in refused.json()["detail"]
        assert client.post("/generate", json={"model": "digits"}).status_code == 200
        assert client.get("/readyz").status_code == 200
        assert 'status="failed"' in client.get("/metrics").text


def test_gan_device_cuda_is_ready_only_on_cuda(model_dir: Path) -> None:
    """GAN_DEVICE=cuda promises the GPU: without one (the session falls back to CPU) the service is not ready
    and says why; where the session really gets CUDA it is ready. Either way it reports the real provider."""
    provider = session_provider(model_dir / "ring" / "1" / "model.onnx", "cuda")
    with TestClient(create_app(Settings(model_dir=model_dir, device="cuda"))) as client:
        ready = client.get("/readyz")
        version = client.get("/models/ring").json()["versions"][0]
        assert version["provider"] == provider  # what the session really uses
        if provider == "CUDAExecutionProvider":
            assert ready.status_code == 200 and version["status"] == "ready"
        else:
            assert ready.status_code == 503
            reasons = ready.json()["models"]
            assert f"GAN_DEVICE=cuda but the session runs on {provider}" in reasons["ring:1"]


def test_auto_serves_on_the_provider_it_got_and_says_so(model_dir: Path) -> None:
    provider = session_provider(model_dir / "digits" / "1" / "model.onnx", "auto")
    with TestClient(create_app(Settings(model_dir=model_dir, device="auto"))) as client:
        assert client.get("/readyz").status_code == 200
        assert client.get("/models/digits").json()["versions"][0]["provider"] == provider


def test_exactly_one_onnxruntime_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert runtime.check_single_runtime() in runtime.ORT_DISTRIBUTIONS
    monkeypatch.setattr(runtime, "installed_runtimes", lambda: ["onnxruntime", "onnxruntime-gpu"])
    with pytest.raises(runtime.RuntimeConflict, match="never both"):
        runtime.check_single_runtime()
    monkeypatch.setattr(runtime, "installed_runtimes", list)
    with pytest.raises(runtime.RuntimeConflict, match="found none"):
        runtime.check_single_runtime()


def test_empty_or_missing_model_dir_is_not_ready(tmp_path: Path) -> None:
    for directory in (tmp_path, tmp_path / "absent"):
        with TestClient(create_app(Settings(model_dir=directory))) as client:
            assert client.get("/readyz").status_code == 503
            assert client.get("/models").json() == {"models": []}
            assert client.post("/generate", json={"model": "x"}).status_code == 404


def test_the_bundled_models_serve() -> None:
    manifests = sorted(BUNDLED_MODELS.glob("*/*/manifest.json"))
    assert manifests, "models/ must hold at least one bundled model"
    with TestClient(create_app(Settings())) as client:
        assert client.get("/readyz").status_code == 200
        for listed in client.get("/models").json()["models"]:
            for version in listed["versions"]:
                assert version["status"] == "ready", version["reason"]
                manifest = version["manifest"]
                assert not manifest["training"]["dry_run"] and manifest["training"]["train_command"]
                assert (
                    BUNDLED_MODELS / listed["name"] / str(version["version"]) / "model.onnx"
                ).stat().st_size < 10e6
            body = client.post(
                "/generate", json={"model": listed["name"], "n": 4, "seed": 0, "format": "npy"}
            )
            assert body.status_code == 200
