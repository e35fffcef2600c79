"""Crash-safe training: a run killed with SIGKILL at a random step resumes to the very weights of a run never
interrupted (training runs in a subprocess, as `python -m training`)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.support import ROOT, wait_until


def train_command(run_dir: Path, steps: int, resume: bool = False) -> list[str]:
    base = [sys.executable, "-m", "training", "train", "--run-dir", str(run_dir), "--steps", str(steps)]
    if resume:
        return [*base, "--resume", "--no-progress"]
    settings = ["batch_size=64", "g_width=64", "d_width=64", "checkpoint_every=1", "log_every=1",
                "sample_every=100000", "num_threads=1"]  # fmt: skip
    return [*base, "--preset", "toy2d", "--data", "ring8", "--no-progress", *[f"--set={s}" for s in settings]]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True, map_location="cpu")
    assert isinstance(state, dict)
    return {f"{part}.{k}": v for part in ("G", "D", "G_ema") for k, v in state[part].items()}


def test_kill_9_at_a_random_step_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    steps = 30
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    # The uninterrupted run goes alongside the one that is killed (one thread each).
    reference = subprocess.Popen(
        train_command(straight, steps), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    rng = random.Random(os.getpid())
    kill_at = rng.randint(5, steps - 10)
    process = subprocess.Popen(
        train_command(crashed, steps), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = crashed / "metrics.jsonl"

    def reached() -> bool:
        assert process.poll() is None, "the run ended before it was killed"
        return metrics.exists() and len(metrics.read_text().splitlines()) >= kill_at

    wait_until(reached, 120, f"step {kill_at} of the run to kill", interval=0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL
    # What a kill leaves is always a whole checkpoint (written beside, fsynced, renamed): it loads.
    saved = torch.load(crashed / "checkpoint.pt", weights_only=True, map_location="cpu")
    assert 0 < saved["step"] < steps, saved["step"]
    subprocess.run(train_command(crashed, steps, resume=True), cwd=ROOT, check=True, capture_output=True)
    _, errors = reference.communicate(timeout=300)
    assert reference.returncode == 0, errors
    print(f"killed after step {saved['step']} of {steps}")
    expected, resumed = final_weights(straight), final_weights(crashed)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
