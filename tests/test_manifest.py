from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.files import sha256_file
from service.manifest import (
    Manifest,
    ManifestError,
    load_manifest,
    parse_manifest,
    save_manifest,
)


def manifest_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "fashion-cgan",
        "version": 2,
        "kind": "image",
        "z_dim": 100,
        "num_classes": 2,
        "class_names": ["a", "b"],
        "output_shape": [1, 28, 28],
        "value_range": [-1.0, 1.0],
        "input_names": ["z", "c"],
        "output_names": ["x"],
        "opset": 20,
        "onnx_sha256": "ab" * 32,
        "created_at": datetime(2026, 1, 2, tzinfo=UTC).isoformat(),
        "training": {
            "preset": "cgan",
            "data": "fashion-mnist",
            "steps": 10,
            "seed": 0,
            "config": {"batch_size": 64},
            "wall_time_s": 1.5,
            "library_versions": {"torch": "2.13.0"},
        },
        "parity_max_abs_diff": 1e-7,
        "metrics": {"fd": 3.0},
        "gates": [{"metric": "fd", "op": "<=", "threshold": 5.0}],
    }
    data.update(overrides)
    return data


def test_round_trip(tmp_path: Path) -> None:
    manifest = parse_manifest(manifest_dict())
    save_manifest(manifest, tmp_path / "manifest.json")
    assert load_manifest(tmp_path / "manifest.json") == manifest
    assert manifest.conditional
    assert list(tmp_path.iterdir()) == [tmp_path / "manifest.json"]  # no temp file left behind


def test_vector_manifest_has_no_value_range() -> None:
    manifest = parse_manifest(
        manifest_dict(
            kind="vector",
            output_shape=[2],
            value_range=None,
            num_classes=0,
            class_names=[],
            input_names=["z"],
        )
    )
    assert manifest.value_range is None and not manifest.conditional


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"z_dim": 0}, "field 'z_dim'"),
        ({"version": 0}, "field 'version'"),
        ({"name": "Bad Name!"}, "field 'name'"),
        ({"onnx_sha256": "xyz"}, "field 'onnx_sha256'"),
        ({"kind": "audio"}, "field 'kind'"),
        ({"unknown": 1}, "field 'unknown'"),
        ({"class_names": ["a"]}, "class_names has 1 entries but num_classes is 2"),
        ({"input_names": ["z"]}, "input_names must be ['z', 'c']"),
        ({"output_shape": [28, 28]}, "output_shape [28, 28] must be 3 positive dims"),
        ({"value_range": [0.0, 1.0]}, "value_range must be [-1, 1]"),
        ({"gates": [{"metric": "kid", "op": "<=", "threshold": 1}]}, "gate on 'kid'"),
    ],
)
def test_errors_name_the_field(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ManifestError) as error:
        parse_manifest(manifest_dict(**overrides), "m.json")
    assert fragment in str(error.value)
    assert str(error.value).startswith("m.json: invalid manifest")


def test_missing_training_field() -> None:
    data = manifest_dict()
    del data["training"]["seed"]
    with pytest.raises(ManifestError, match=r"field 'training.seed': Field required"):
        parse_manifest(data)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest file is missing"):
        load_manifest(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ManifestError, match="must be a JSON object, got list"):
        load_manifest(tmp_path / "list.json")


def test_manifest_is_frozen() -> None:
    manifest = parse_manifest(manifest_dict())
    with pytest.raises(ValueError, match="frozen"):
        manifest.version = 3  # type: ignore[misc]


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_model_class_is_the_contract() -> None:
    assert set(Manifest.model_fields) >= {
        "name", "version", "kind", "z_dim", "num_classes", "class_names", "output_shape", "value_range",
        "input_names", "output_names", "opset", "onnx_sha256", "created_at", "training",
        "parity_max_abs_diff", "metrics", "gates",
    }  # fmt: skip
