"""Shared fixtures: tiny configurations and tiny trained runs, real files and real ONNX graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.config import TrainConfig, preset_config
from training.loop import train

TINY = dict(g_width=8, d_width=8, batch_size=16, log_every=1, sample_every=1000, checkpoint_every=1000)


def tiny_config(preset: str, **overrides: Any) -> TrainConfig:
    """A preset shrunk to seconds of CPU time; overrides win."""
    z_dim = 8 if preset in ("mlp", "toy2d") else 16
    return preset_config(preset, **{**TINY, "z_dim": z_dim, **overrides})


@pytest.fixture(scope="session")
def conditional_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conditional DCGAN trained for 3 real steps on sklearn's 8x8 digits."""
    run_dir = tmp_path_factory.mktemp("cgan-run")
    train(tiny_config("cgan", data="digits", steps=3), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def vector_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unconditional MLP trained for 3 steps on the 2-D ring."""
    run_dir = tmp_path_factory.mktemp("toy-run")
    train(tiny_config("toy2d", data="ring8", steps=3), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def model_dir(conditional_run: Path, vector_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with a conditional image model (`digits`, 8x8, 10 classes) and a 2-D one (`ring`)."""
    from training.export import export

    root = tmp_path_factory.mktemp("models")
    export(conditional_run, root, "digits")
    export(vector_run, root, "ring")
    return root
