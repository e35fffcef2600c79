"""CPU sessions: the wide session (a thread per CPU) that computes a batch alone gives the same bytes as the
runners' narrow one, exists only where it adds threads, and the service answers the same with and without it."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import runtime
from service.main import create_app
from service.runtime import open_session
from service.settings import BUNDLED_MODELS, Settings

CGAN = BUNDLED_MODELS / "fashion-cgan" / "4" / "model.onnx"


def test_the_wide_session_has_more_threads_and_the_same_bytes() -> None:
    info = open_session(CGAN, "cpu", intra_threads=1, wide_threads=2)
    assert info.wide is not None and info.wide.get_session_options().intra_op_num_threads == 2
    assert info.session.get_session_options().intra_op_num_threads == 1
    rng = np.random.default_rng(0)
    feeds = {"z": rng.standard_normal((16, 100)).astype(np.float32),
             "c": np.eye(10, dtype=np.float32)[np.arange(16) % 10]}  # fmt: skip
    for rows in (1, 16):
        part = {k: v[:rows] for k, v in feeds.items()}
        (narrow,), (wide,) = info.run(part, ["x"]), info.run_alone(part, ["x"])
        assert narrow.tobytes() == wide.tobytes()
    assert open_session(CGAN, "cpu", intra_threads=2, wide_threads=2).wide is None  # nothing to add
    assert open_session(CGAN, "cpu", intra_threads=1).wide is None


def test_the_service_opens_it_per_setting_and_answers_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone 3-row request (alone, under GAN_SPLIT_ROWS x 2) runs on the wide session when there is one."""
    monkeypatch.setattr(runtime, "available_cpus", lambda: 2)
    body = {"model": "fashion-cgan", "n": 3, "seed": 7, "format": "png"}
    answers = {}
    for wide in (True, False):
        with TestClient(create_app(Settings(wide_session=wide, intra_op_threads=1))) as client:
            model = client.app.state.gan.repository.get("fashion-cgan", None)  # type: ignore[attr-defined]
            assert (model.session.wide is not None) is wide
            answers[wide] = [
                base64.b64decode(i) for i in client.post("/generate", json=body).json()["images"]
            ]
    assert answers[True] == answers[False] and len(answers[True]) == 3
