from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import BUNDLED_MODELS, Settings


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GAN_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("GAN_MAX_BATCH_ROWS", "16")
    monkeypatch.setenv("GAN_DEVICE", "cpu")
    settings = Settings()
    assert (settings.model_dir, settings.max_batch_rows, settings.device) == (tmp_path, 16, "cpu")


def test_defaults_serve_the_bundled_models() -> None:
    settings = Settings()
    assert settings.model_dir == BUNDLED_MODELS and settings.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"device": "tpu"}, "device"),
        ({"max_batch_rows": 0}, "max_batch_rows"),
        ({"port": 70000}, "port"),
        ({"max_n": 5000}, "GAN_MAX_N (5000) exceeds GAN_MAX_QUEUE_ROWS (4096)"),
        ({"max_page_rows": 10, "max_queue_rows": 5, "max_n": 5, "max_steps": 5}, "GAN_MAX_PAGE_ROWS (10)"),
    ],
)
def test_invalid_settings_name_the_variable(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(**values)  # type: ignore[arg-type]
