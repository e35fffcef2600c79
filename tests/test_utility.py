"""Downstream utility (training/utility.py): its synthetic rows are /augment's bytes, and the protocol runs end
to end (tiny settings) into a valid manifest section with its gates."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.main import create_app
from service.manifest import load_manifest
from service.settings import BUNDLED_MODELS, Settings
from tests.support import asgi_client
from training import utility
from training.utility import Generator, evaluate_utility, real_split, report_utility

FASHION = BUNDLED_MODELS / "fashion-cgan" / "4"


def augment_npz(body: dict[str, object]) -> dict[str, np.ndarray]:
    async def scenario() -> bytes:
        async with asgi_client(create_app(Settings(quality_gate="off"))) as c:
            response = await c.post("/augment", json={"model": "fashion-cgan"} | body)
            assert response.status_code == 200, response.text
            return response.content

    with np.load(io.BytesIO(asyncio.run(scenario())), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def png(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_synthetic_rows_are_augments_rows() -> None:
    gen = Generator(FASHION, load_manifest(FASHION / "manifest.json"))
    x, y = gen.balanced(per_class=2)
    served = augment_npz({"per_class": {str(k): 2 for k in range(10)}, "seed": utility.SYNTHETIC_SEED})
    assert np.array_equal(served["y"], y) and np.array_equal(served["x"], x)


def test_the_variations_are_augments_variations_of() -> None:
    gen = Generator(FASHION, load_manifest(FASHION / "manifest.json"))
    real_x, real_y = real_split("test")
    few = real_x[:3], real_y[:3]
    x, y = gen.variations(*few, per_image=2)
    spec = {"images": [png(i) for i in few[0]], "labels": [int(v) for v in few[1]], "per_image": 2,
            "sigma": utility.SIGMA}  # fmt: skip
    served = augment_npz({"variations_of": spec, "seed": utility.SYNTHETIC_SEED})
    assert np.array_equal(served["y"], y)
    # the encoder runs in the service's batch of 3 and here in one of 3: the same rows, within float rounding
    assert np.abs(served["x"].astype(int) - x.astype(int)).max() <= 1


def test_the_protocol_runs_into_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version = tmp_path / "fashion-cgan" / "4"
    shutil.copytree(FASHION, version)
    monkeypatch.setitem(utility.CLASSIFIER, "steps", 3)
    monkeypatch.setattr(utility, "AUGMENT_ROWS", 40)
    manifest = evaluate_utility(version, "test", sizes=(50,), shots=(2,), seeds=(0, 1))
    assert (
        manifest.utility is not None and load_manifest(version / "manifest.json").utility == manifest.utility
    )
    m = manifest.utility.metrics
    assert m["tstr_ratio_50"] == pytest.approx(m["tstr_accuracy_50"] / m["trtr_accuracy_50"], abs=1e-5)
    for key in ("k2_real", "k2_synthetic", "k2_variations"):
        assert 0 <= m[key] <= 1 and f"{key}_se" in m
    assert m["gain_k2_synthetic"] == pytest.approx(m["k2_synthetic"] - m["k2_real"], abs=1e-5)
    assert m["gain_k2_variations"] == pytest.approx(m["k2_variations"] - m["k2_real"], abs=1e-5)
    assert manifest.utility.gates == []  # the gates are on N = 10,000 and k = 50, not measured here
    assert manifest.utility.classifier["steps"] == 3 and manifest.utility.evaluation is not None
    assert "gain_k2_synthetic" in report_utility(manifest)
