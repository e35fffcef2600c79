from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_config
from training.__main__ import main
from training.checkpoint import CHECKPOINT, ResumeError, load_checkpoint
from training.config import PRESETS, TrainConfig
from training.loop import StopRequest, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_dry_run(preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / preset
    assert main(["train", "--preset", preset, "--dry-run", "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    config = json.loads((run_dir / "config.json").read_text())
    assert config["preset"] == preset and config["steps"] == 2
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(np.isfinite([r["d_loss"], r["g_loss"]]).all() and r["images_per_s"] > 0 for r in lines)
    with Image.open(run_dir / "samples" / "0000002.png") as preview:
        assert preview.size[0] > 32
    state = load_checkpoint(run_dir / CHECKPOINT)
    assert state["step"] == 2 and state["dry_run"] and state["config"] == config


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory: pytest.TempPathFactory) -> str:
    """40 labelled 8x8 images: with batch 16 an epoch is 2 steps, so short runs cross epochs."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("npz") / "small.npz"
    np.savez(path, x=rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8), y=rng.integers(0, 4, 40))
    return str(path)


def _assert_same(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where} keys differ"
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where} lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


RESUME_CASES = {
    "dcgan": dict(data="npz"),  # BatchNorm in G and D, EMA
    "dcgan/pack": dict(data="npz", pack=2, d_norm="none", spectral_norm=True),  # PacDCGAN (stacked MNIST)
    "cgan": dict(data="npz"),  # conditional, spectral norm, hinge
    "cgan/extra_convs": dict(data="npz", extra_convs=True),  # 3x3 stride-1 convs in D and at G's output
    "wgan-gp": dict(data="npz"),  # n_critic = 5 and the random interpolation of the gradient penalty
    "wgan": dict(data="npz"),  # RMSprop's square averages, weight clipping after each critic update
    "mlp": dict(data="npz"),  # minimax, no EMA
    "mlp/g_norm": dict(
        data="npz", g_norm="batch", ema_decay=0.9
    ),  # BatchNorm in the MLP G: its running stats
    # R3GAN's objective (rpgan + R1 + R2) behind all three DiffAugment policies: their random draws resume too
    "mlp/r3gan-diffaug": dict(
        data="npz",
        loss="rpgan",
        r1_gamma=1.0,
        r2_gamma=1.0,
        diffaug="color,translation,cutout",
        ema_decay=0.9,
    ),
    "cgan/rpgan": dict(data="npz", loss="rpgan", diffaug="translation"),  # paired real and fake labels
    "toy2d": dict(data="ring8", pack=2, r1_gamma=0.1),  # on-the-fly sampling, packing, R1
    # MGAN: affine sub-generators and the classifier, whose weights and optimiser must resume too
    "toy2d/mgan": dict(data="ring8", g_mixture=4, g_layers=0, mixture_beta=1.0),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_is_exact(case: str, tmp_path: Path, small_npz: str) -> None:
    preset, overrides = case.split("/")[0], dict(RESUME_CASES[case])
    if overrides["data"] == "npz":
        overrides["data_dir"] = small_npz
    cfg = tiny_config(preset, **overrides, steps=6)
    train(cfg, tmp_path / "straight", progress=False)
    train(dataclasses.replace(cfg, steps=3), tmp_path / "split", progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    straight = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    split = load_checkpoint(tmp_path / "split" / CHECKPOINT)
    assert straight["step"] == split["step"] == 6
    for key in ("G", "D", "G_ema", "opt_g", "opt_d", "C", "opt_c", "rng"):
        _assert_same(straight[key], split[key], key)
    assert (straight["C"] is not None) == ("mixture_beta" in overrides)
    # The same networks without the resume in between really are different from an untrained one.
    fresh = _fresh_g(cfg, tmp_path)
    assert not all(torch.equal(straight["G"][key], fresh[key]) for key in fresh)


def _fresh_g(cfg: TrainConfig, tmp_path: Path) -> dict[str, torch.Tensor]:
    train(dataclasses.replace(cfg, steps=0), tmp_path / "fresh", progress=False)
    return load_checkpoint(tmp_path / "fresh" / CHECKPOINT)["G"]  # type: ignore[no-any-return]


def test_existing_checkpoint_needs_resume(vector_run: Path) -> None:
    with pytest.raises(ResumeError, match="pass --resume to continue it"):
        train(tiny_config("toy2d", data="ring8", steps=3), vector_run, progress=False)


def test_resume_refuses_a_changed_config(vector_run: Path) -> None:
    cfg = tiny_config("toy2d", data="ring8", steps=5, beta2=0.5)
    with pytest.raises(ResumeError, match=r"different config: beta2 \(0.999 -> 0.5\)"):
        train(cfg, vector_run, resume=True, progress=False)


def test_resume_may_change_the_r1_weight_and_records_it(tmp_path: Path) -> None:
    cfg = tiny_config("toy2d", data="ring8", steps=2, r1_gamma=0.1)
    train(cfg, tmp_path, progress=False, command="first")
    train(
        dataclasses.replace(cfg, steps=4, r1_gamma=0.001),
        tmp_path,
        resume=True,
        progress=False,
        command="second",
    )
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["step"] == 4 and state["config"]["r1_gamma"] == 0.001
    assert state["train_command"] == "first && second"


def test_resume_may_lower_the_learning_rates(tmp_path: Path) -> None:
    """The optimisers' saved state carries the old rates: the new ones must win, the classifier's included."""
    cfg = tiny_config("toy2d", data="ring8", steps=2, g_mixture=4, g_layers=0, mixture_beta=1.0)
    train(cfg, tmp_path, progress=False)
    train(dataclasses.replace(cfg, steps=3, lr_g=1e-5, lr_d=3e-6), tmp_path, resume=True, progress=False)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    rates = [[group["lr"] for group in state[key]["param_groups"]] for key in ("opt_g", "opt_d", "opt_c")]
    assert rates == [[1e-5], [3e-6], [3e-6]]


def test_each_invocation_records_what_it_ran_on(tmp_path: Path) -> None:
    """Segments: one per invocation that trained, with what `auto` resolved to; export copies them."""
    from service.manifest import load_manifest
    from training.export import export

    threads = torch.get_num_threads()
    try:
        cfg = tiny_config("dcgan", data="digits", steps=2, num_threads=1, precision="fp32")
        train(cfg, tmp_path / "run", progress=False)
        train(dataclasses.replace(cfg, steps=3, num_threads=2), tmp_path / "run", resume=True, progress=False)
        train(
            dataclasses.replace(cfg, steps=3), tmp_path / "run", resume=True, progress=False
        )  # trains nothing
    finally:
        torch.set_num_threads(threads)
    segments = load_checkpoint(tmp_path / "run" / CHECKPOINT)["segments"]
    assert [{k: v for k, v in seg.items() if k != "wall_time_s"} for seg in segments] == [
        {"from_step": 0, "to_step": 2, "device": "cpu", "precision": "fp32", "threads": 1}
        | {"world_size": 1, "backend": "none"},
        {"from_step": 2, "to_step": 3, "device": "cpu", "precision": "fp32", "threads": 2}
        | {"world_size": 1, "backend": "none"},
    ]
    assert all(seg["wall_time_s"] > 0 for seg in segments)
    manifest = load_manifest(export(tmp_path / "run", tmp_path / "models", "m") / "manifest.json")
    assert manifest.training.segments == segments


def test_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="no checkpoint found"):
        train(tiny_config("toy2d", data="ring8"), tmp_path, resume=True, progress=False)


def test_checkpoint_is_weights_only_and_corruption_is_reported(vector_run: Path, tmp_path: Path) -> None:
    payload = (vector_run / CHECKPOINT).read_bytes()
    torch.load(vector_run / CHECKPOINT, weights_only=True)  # plain tensors and data: no pickled objects
    (tmp_path / CHECKPOINT).write_bytes(payload[: len(payload) // 2])
    with pytest.raises(ResumeError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / CHECKPOINT)
    assert not [
        p for p in vector_run.iterdir() if p.name.endswith(".tmp")
    ]  # atomic writes leave no temp files


def test_epochs_become_steps(tmp_path: Path, small_npz: str) -> None:
    cfg = tiny_config("dcgan", data="npz", data_dir=small_npz)
    train(cfg, tmp_path, epochs=3, progress=False)  # 40 // 16 = 2 batches per epoch
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 6


def test_stop_request_defers_the_signal() -> None:
    # Whatever handler was there before is put back (a background job starts with SIGINT ignored).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert stop.requested  # no KeyboardInterrupt was raised mid-step
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_ctrl_c_writes_a_checkpoint_and_resume_continues(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "--preset", "toy2d", "--data", "ring8", "--steps", "1000000", "--run-dir", str(run_dir),
            "--no-progress", "--set", "g_width=8", "--set", "d_width=8", "--set", "log_every=1"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "training", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "continue with --resume" in stderr
    state = load_checkpoint(run_dir / CHECKPOINT)
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert state["step"] == logged[-1] >= 3  # saved at the step boundary it had reached
    more = [
        "train",
        "--resume",
        "--run-dir",
        str(run_dir),
        "--steps",
        str(state["step"] + 2),
        "--no-progress",
    ]
    assert main(more) == 0
    assert load_checkpoint(run_dir / CHECKPOINT)["step"] == state["step"] + 2


def test_the_mgan_term_reaches_the_generator_only(tmp_path: Path) -> None:
    """mixture_beta adds β × the classifier's cross-entropy to G's loss: after one step from the same seed,
    D (updated before G) is identical, G is not, and the classifier has taken optimiser steps."""
    base = tiny_config("toy2d", data="ring8", steps=1, g_mixture=4, g_layers=0, pack=1)
    train(base, tmp_path / "plain", progress=False)
    train(dataclasses.replace(base, mixture_beta=1.0), tmp_path / "mgan", progress=False)
    plain, mgan = (load_checkpoint(tmp_path / name / CHECKPOINT) for name in ("plain", "mgan"))
    _assert_same(plain["D"], mgan["D"], "D")
    assert not all(torch.equal(plain["G"][k], mgan["G"][k]) for k in plain["G"])
    assert plain["C"] is None and mgan["C"] is not None and mgan["opt_c"]["state"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(mixture_beta=1.0), "mixture_beta"),  # no mixture to classify
        (dict(g_mixture=4, mixture_beta=-1.0), "mixture_beta"),
        (dict(g_layers=-1), "g_layers"),
        (dict(arch="dcgan", data="digits", g_layers=1), "g_layers"),  # DCGAN G has no such knob
    ],
)
def test_mixture_options_are_checked(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config("toy2d", **{"data": "ring8", **overrides})
