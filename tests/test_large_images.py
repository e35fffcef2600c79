"""128x128 images from a user's folder, grey and RGB, for every image preset: a short run, and the export's
torch-vs-ONNX parity and contract (the shapes of every DCGAN size are in test_networks.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.manifest import load_manifest
from tests.support import tiny_config
from training.__main__ import main
from training.checkpoint import CHECKPOINT, load_checkpoint
from training.export import PARITY_TOLERANCE, export
from training.loop import train

SIZE = 128
IMAGE_PRESETS = ["mlp", "dcgan", "cgan", "wgan-gp"]


def write_folder(root: Path, mode: str) -> Path:
    """Two classes of 8 images at 150x150 (resized to 128 by --image-size): blobs of one colour per class."""
    rng = np.random.default_rng(0)
    for label, colour in enumerate(((230, 40, 40), (40, 40, 230))):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 60, (150, 150, 3), dtype=np.uint8)
            y, x = rng.integers(20, 110, 2)
            pixels[y : y + 40, x : x + 40] = colour
            Image.fromarray(pixels).convert(mode).save(root / f"class{label}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    base = tmp_path_factory.mktemp("large")
    return {1: write_folder(base / "grey", "L"), 3: write_folder(base / "rgb", "RGB")}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", IMAGE_PRESETS)
def test_every_image_preset_trains_on_128_pixel_folders(
    preset: str, channels: int, folders: dict[int, Path], tmp_path: Path
) -> None:
    cfg = tiny_config(
        preset, data="folder", data_dir=str(folders[channels]), image_size=SIZE, batch_size=8, steps=2
    )
    train(cfg, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["step"] == 2 and list(state["net_spec"]["out_shape"]) == [channels, SIZE, SIZE]
    assert list(state["data_spec"]["class_names"]) == ["class0", "class1"]
    with Image.open(tmp_path / "samples" / "0000002.png") as grid:
        assert grid.size[0] > 8 * SIZE  # the preview grid holds 128-pixel images


def test_a_128_pixel_model_exports_with_parity(folders: dict[int, Path], tmp_path: Path) -> None:
    """The conditional RGB case through the command line (grey differs in G's last layer only)."""
    preset, channels = "cgan", 3
    run_dir = tmp_path / "run"
    args = ["train", "--preset", preset, "--data", "folder", "--data-dir", str(folders[channels]),
            "--image-size", str(SIZE), "--steps", "2", "--batch-size", "8", "--run-dir", str(run_dir),
            "--no-progress", "--set", "g_width=8", "--set", "d_width=8"]  # fmt: skip
    assert main(args) == 0
    manifest = load_manifest(export(run_dir, tmp_path / "models", "large") / "manifest.json")
    assert manifest.output_shape == [channels, SIZE, SIZE]
    assert manifest.num_classes == (2 if preset == "cgan" else 0)
    assert manifest.parity_max_abs_diff <= PARITY_TOLERANCE
