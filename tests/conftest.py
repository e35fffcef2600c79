"""Shared fixtures: tiny trained runs and their exported models (real files and real ONNX graphs), and a real
service process. The plain helpers they use are in tests/support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import TINY, running_service, tiny_config

__all__ = ["TINY", "tiny_config"]  # still importable from here, as tests/test_loop.py and test_export.py do


def _trained(factory: pytest.TempPathFactory, name: str, preset: str, data: str) -> Path:
    from training.loop import train  # torch is imported by the tests that need a trained run, not by all

    run_dir = factory.mktemp(name)
    train(tiny_config(preset, data=data, steps=3), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def conditional_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conditional DCGAN trained for 3 real steps on sklearn's 8x8 digits."""
    return _trained(tmp_path_factory, "cgan-run", "cgan", "digits")


@pytest.fixture(scope="session")
def vector_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unconditional MLP trained for 3 steps on the 2-D ring."""
    return _trained(tmp_path_factory, "toy-run", "toy2d", "ring8")


@pytest.fixture(scope="session")
def model_dir(conditional_run: Path, vector_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with a conditional image model (`digits`, 8x8, 10 classes) and a 2-D one (`ring`)."""
    from training.export import export

    root = tmp_path_factory.mktemp("models")
    export(conditional_run, root, "digits")
    export(vector_run, root, "ring")
    return root


@pytest.fixture(scope="module")
def bundled_service() -> Iterator[str]:
    """`python -m service` with its default settings (the bundled models) on a free 127.0.0.1 port, shared by
    the tests of one module that neither reconfigure nor stop it: yields its URL."""
    with running_service() as (url, _):
        yield url
