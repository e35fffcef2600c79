"""Training under torchrun (2 ranks, gloo, this machine's CPU) equals one process at the same global batch.

The 2-rank runs are tests/ddp_runs.py under `python -m torch.distributed.run --standalone --nproc_per_node 2`
(one launch for every case); the one-process runs are `train()` here, from the same configs.

Tolerance: not bit-exact, and cannot be. Two ranks compute the same sums in another order: a weight gradient
is the mean of two half-batch sums instead of one sum over the batch, and global BatchNorm adds the two
halves' Σx and Σx² (float64) where one process's kernel reduces all samples at once. Each such sum differs
in its last bits (~1e-7 relative in float32); Adam and 20 steps of a GAN's feedback carry those bits along.
The exported generators' outputs (tanh images in [-1, 1], mixture points within ±5) must agree to TOLERANCE
= 1e-5; measured here: 3e-8 to 1.1e-7 for every case (the tolerance leaves two orders of magnitude for other
CPUs' kernels, and is ten times tighter than the export's torch-vs-ONNX parity bound of 1e-4). What a real
difference does is far above it:
two ranks on each other's samples, or BatchNorm with per-rank statistics, move outputs by 1e-2 and more
(the negative control below measures one). Within two ranks everything is exact: a resume under DDP equals
the uninterrupted 2-rank run bit for bit, and the RNG streams after any mix of world sizes are bit-identical
to one process's (they do not depend on the ranks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from tests.ddp_runs import CASES, STEPS, case_config
from tests.support import ROOT, wait_until
from training.checkpoint import CHECKPOINT, load_checkpoint
from training.data import make_source
from training.distributed import Ranks, check_batch
from training.export import load_generator
from training.loop import train
from training.networks import NetSpec
from training.preview import preview_latents
from training.step import Latents

TOLERANCE = 1e-5
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def torchrun_env() -> dict[str, str]:
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/<case>/{one,two}, and the dcgan resume runs of both directions (see tests/ddp_runs.py)."""
    out = tmp_path_factory.mktemp("ddp")
    for case in CASES:
        train(case_config(case), out / case / "one", progress=False)
    train(case_config("dcgan", STEPS // 2), out / "dcgan" / "one-then-two", progress=False)
    result = subprocess.run(
        [*TORCHRUN, "-m", "tests.ddp_runs", str(out)],
        cwd=ROOT, env=torchrun_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    train(case_config("dcgan"), out / "dcgan" / "two-then-one", resume=True, progress=False)
    return out


def outputs(run_dir: Path) -> torch.Tensor:
    """The exported generator (EMA weights, eval mode, as export converts it) on 64 fixed latents."""
    G, run = load_generator(run_dir)
    z, c = preview_latents(1, run.spec, torch.device("cpu"))
    with torch.no_grad():
        return G(z, c)  # type: ignore[no-any-return]


def state(run_dir: Path) -> dict[str, Any]:
    return load_checkpoint(run_dir / CHECKPOINT)


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_equal_one_process(case: str, runs: Path) -> None:
    one, two = state(runs / case / "one"), state(runs / case / "two")
    assert one["step"] == two["step"] == STEPS
    diff = float((outputs(runs / case / "one") - outputs(runs / case / "two")).abs().max())
    print(f"{case}: max |one process - two ranks| = {diff:.2e}")
    assert diff <= TOLERANCE
    # the randomness is the ranks': both processes drew the same streams, to the last bit
    assert all(torch.equal(one["rng"][k], two["rng"][k]) for k in ("torch", "latent"))
    (segment,) = two["segments"]
    assert (segment["world_size"], segment["backend"], segment["threads"]) == (2, "gloo", 1)
    assert one["segments"][0]["world_size"] == 1 and one["segments"][0]["backend"] == "none"
    if one["C"] is not None:  # MGAN's classifier is trained alike
        assert max(float((one["C"][k] - two["C"][k]).abs().max()) for k in one["C"]) <= TOLERANCE


def test_a_real_difference_is_far_above_the_tolerance(runs: Path, tmp_path: Path) -> None:
    """Negative control: one process on half the batch (what each rank would learn from alone) ends far from
    the 2-rank run, so the tolerance separates."""
    half = dataclasses.replace(case_config("dcgan"), batch_size=8)
    train(half, tmp_path / "half", progress=False)
    diff = float((outputs(tmp_path / "half") - outputs(runs / "dcgan" / "two")).abs().max())
    assert diff > 100 * TOLERANCE


def same(a: Any, b: Any) -> bool:
    """Equal to the last bit, through the nested dicts and lists of a checkpoint."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_resume_under_ddp_is_exact(runs: Path) -> None:
    straight, split = state(runs / "dcgan" / "two"), state(runs / "dcgan" / "two-split")
    for key in ("G", "D", "G_ema", "opt_g", "opt_d", "rng"):
        assert same(straight[key], split[key]), key
    assert [s["to_step"] for s in split["segments"]] == [STEPS // 2, STEPS]


@pytest.mark.parametrize(("resumed", "first", "then"), [("one-then-two", 1, 2), ("two-then-one", 2, 1)])
def test_resume_with_another_number_of_ranks(runs: Path, resumed: str, first: int, then: int) -> None:
    one, other = state(runs / "dcgan" / "one"), state(runs / "dcgan" / resumed)
    assert all(torch.equal(one["rng"][k], other["rng"][k]) for k in ("torch", "latent"))
    diff = float((outputs(runs / "dcgan" / "one") - outputs(runs / "dcgan" / resumed)).abs().max())
    assert diff <= TOLERANCE
    assert [(s["from_step"], s["to_step"], s["world_size"]) for s in other["segments"]] == [
        (0, STEPS // 2, first),
        (STEPS // 2, STEPS, then),
    ]


def test_check_replicas_fails_on_every_rank_when_one_differs(runs: Path) -> None:
    for rank in (0, 1):
        seen = (runs / f"replica-check-{rank}.txt").read_text().splitlines()
        assert seen[0] == "equal" and "replicas differ in net.bias" in seen[1], seen


# --- the global batch, sliced (no process group needed) ---------------------------------------------------


def test_each_rank_takes_its_slice_of_the_same_global_batch() -> None:
    """The parts of 2 and 4 ranks are the one-process batch: data, labels, latents and their labels."""
    source = make_source("digits", seed=3)
    spec = NetSpec.from_config(case_config("cgan"), source.spec)
    whole_x, whole_y = source.batch(5, 16)
    whole_latents = Latents(spec, 16, torch.Generator().manual_seed(7))()
    for world_size in (2, 4):
        parts = [Ranks(rank=r, world_size=world_size).part(16) for r in range(world_size)]
        xs, ys = zip(*(source.batch(5, 16, part) for part in parts), strict=True)
        assert all(len(x) == 16 // world_size for x in xs)
        assert torch.equal(torch.cat(xs), whole_x) and torch.equal(torch.cat(ys), whole_y)  # type: ignore[arg-type]
        drawn = [Latents(spec, 16, torch.Generator().manual_seed(7), part)() for part in parts]
        assert torch.equal(torch.cat([z for z, _ in drawn]), whole_latents[0])
        assert torch.equal(torch.cat([c for _, c in drawn]), whole_latents[1])  # type: ignore[misc]


def test_the_global_batch_must_split_evenly() -> None:
    check_batch(16, 2, Ranks(world_size=4))
    with pytest.raises(ValueError, match="multiple of world_size 4 x pack 2"):
        check_batch(12, 2, Ranks(world_size=4))


# --- the command line under torchrun, and a rank that dies ------------------------------------------------


def test_a_dead_rank_ends_the_job_and_the_checkpoint_resumes(tmp_path: Path) -> None:
    """`torchrun -m training train`: rank 0 alone logs; SIGKILL on rank 1 ends the job (no hang) with the last
    checkpoint whole; one process resumes it and the export says how each segment was trained."""
    from service.manifest import load_manifest
    from training.__main__ import main

    run_dir = tmp_path / "run"
    args = ["-m", "training", "train", "--preset", "toy2d", "--data", "ring8", "--steps", "1000000",
            "--batch-size", "64", "--run-dir", str(run_dir), "--no-progress",
            *[f"--set={s}" for s in ("g_width=8", "d_width=8", "log_every=1", "checkpoint_every=1",
                                     "sample_every=1000000", "dist_timeout_s=60")]]  # fmt: skip
    job = subprocess.Popen(
        [*TORCHRUN, *args], cwd=ROOT, env=torchrun_env(), stderr=subprocess.PIPE, text=True
    )
    metrics = run_dir / "metrics.jsonl"
    try:
        # step 4 logged: rank 0 wrote step 3's checkpoint before it (a step is logged before it is saved, and
        # a kill right after step 3's line may stop rank 0 before that save: CI saw step 2's)
        wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 4, 180, "4 steps")
        (rank1,) = [p for p in psutil.Process(job.pid).children(recursive=True) if _rank(p) == "1"]
        rank1.send_signal(signal.SIGKILL)
        _, stderr = job.communicate(timeout=120)  # torchrun stops the other rank and fails
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0, stderr[-2000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no line twice
    saved = load_checkpoint(run_dir / CHECKPOINT)  # whole: written beside, then renamed
    assert 3 <= saved["step"] <= steps[-1]
    assert main(["train", "--resume", "--run-dir", str(run_dir), "--steps", str(saved["step"] + 2),
                 "--no-progress"]) == 0  # fmt: skip
    target = tmp_path / "models"
    assert main(["export", "--run-dir", str(run_dir), "--model-dir", str(target), "--name", "ring"]) == 0
    segments = load_manifest(target / "ring" / "1" / "manifest.json").training.segments
    assert [(s["world_size"], s["backend"]) for s in segments] == [(2, "gloo"), (1, "none")]
    assert segments[0]["to_step"] == saved["step"] and segments[1]["to_step"] == saved["step"] + 2
    shutil.rmtree(run_dir)


def _rank(process: psutil.Process) -> str | None:
    try:
        return process.environ().get("RANK")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def test_a_torchrun_rank_ends_without_the_interpreters_finalization(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun (WORLD_SIZE > 1) the CLI ends with os._exit and main's code, after flushing; one
    process exits as usual. (DDP leaves its gloo threads running past destroy_process_group, and finalizing
    beside them sometimes aborted a rank.)"""
    import training.__main__ as cli

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli, "main", lambda: 2)
    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit):
        cli.run()
    assert exits == [2]
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit) as ended:
        cli.run()
    assert ended.value.code == 2 and exits == [2]
