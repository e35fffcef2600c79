"""Every 2-D mixture model gets its contour figure at export; the CLI rewrites it; the service ignores it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.main import create_app
from service.settings import BUNDLED_MODELS, Settings
from tests.support import tiny_config
from training.__main__ import main
from training.contours import CONTOURS_FILE


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export import export
    from training.loop import train

    run = tmp_path_factory.mktemp("gauss2-run")
    train(tiny_config("toy2d", data="gauss2", steps=3), run, progress=False)
    return export(run, tmp_path_factory.mktemp("models"), "gauss2")


def test_export_writes_the_figure_beside_the_manifest(exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [CONTOURS_FILE, "manifest.json", "model.onnx"]
    with Image.open(exported / CONTOURS_FILE) as image:
        assert image.format == "PNG"
    assert (exported / CONTOURS_FILE).stat().st_size < 200_000


def test_the_cli_rewrites_it_and_refuses_image_models(
    exported: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (exported / CONTOURS_FILE).unlink()
    assert main(["contours", "--model-dir", str(exported.parents[1]), "--name", "gauss2"]) == 0
    assert (exported / CONTOURS_FILE).is_file()
    out = tmp_path / "figures" / "c.png"
    assert (
        main(["contours", "--model-dir", str(exported.parents[1]), "--name", "gauss2", "--out", str(out)])
        == 0
    )
    assert out.is_file()
    assert main(["contours", "--model-dir", str(model_dir), "--name", "digits"]) == 2
    assert "contour figures are for 2-D mixture models" in capsys.readouterr().err


@pytest.mark.parametrize("bundled", [False, True], ids=["exported-here", "bundled"])
def test_the_service_serves_a_version_with_a_figure_beside_it(
    exported: Path, tmp_path: Path, bundled: bool
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS / "gauss2" if bundled else exported.parent, repo / "gauss2")
    assert (repo / "gauss2" / "1" / CONTOURS_FILE).is_file()
    with TestClient(create_app(Settings(model_dir=repo))) as client:
        listed = client.get("/models").json()["models"]
        assert [(m["name"], m["versions"][0]["status"]) for m in listed] == [("gauss2", "ready")]
        response = client.post("/generate", json={"model": "gauss2", "n": 3, "seed": 1, "format": "json"})
        assert response.status_code == 200, response.text
        assert [len(row) for row in response.json()["data"]] == [2, 2, 2]
