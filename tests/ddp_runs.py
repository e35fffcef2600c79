"""The 2-rank side of tests/test_distributed.py, run under torchrun: `python -m tests.ddp_runs OUT`.

Trains every case of CASES for STEPS steps into OUT/<case>/two (one process group for all of them), and the
resume cases: OUT/dcgan/two-split (STEPS // 2 steps, copied to OUT/dcgan/two-then-one for the test to
resume with one process, then resumed here to STEPS) and OUT/dcgan/one-then-two (the test's one-process
checkpoint at STEPS // 2, resumed here with two ranks). Last, that check_replicas fails on every rank when
one rank's weights differ: OUT/replica-check-<rank>.txt holds what each rank saw.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tests.support import tiny_config
from training.__main__ import exit_rank
from training.config import TrainConfig
from training.distributed import Ranks, check_replicas
from training.loop import train

STEPS = 20
# preset, overrides: BatchNorm and EMA; conditional, spectral norm, hinge; n_critic 5 and the gradient
# penalty's random interpolation; PacGAN packing and R1; MGAN's mixture and classifier
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "dcgan": ("dcgan", dict(data="digits")),
    "cgan": ("cgan", dict(data="digits")),
    "wgan-gp": ("wgan-gp", dict(data="digits")),
    "toy2d": ("toy2d", dict(data="ring8", pack=2, r1_gamma=0.1)),
    "toy2d-mgan": ("toy2d", dict(data="ring8", g_mixture=4, g_layers=0, mixture_beta=1.0)),
}


def case_config(case: str, steps: int = STEPS) -> TrainConfig:
    """fp32 and one thread per process: bf16 autocast would put its rounding into the comparison."""
    preset, overrides = CASES[case]
    return tiny_config(preset, **overrides, steps=steps, precision="fp32", num_threads=1)


def replica_check(out: Path) -> None:
    ranks = Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(), backend="gloo")
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    outcome = [check_replicas({"net": net}, ranks, torch.device("cpu")) or "equal"]
    with torch.no_grad():
        net.bias[1] += 1e-6 if ranks.rank == 1 else 0.0
    try:
        check_replicas({"net": net}, ranks, torch.device("cpu"))
        outcome.append("not detected")
    except RuntimeError as error:
        outcome.append(str(error))
    (out / f"replica-check-{ranks.rank}.txt").write_text("\n".join(outcome) + "\n")


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    for case in CASES:
        train(case_config(case), out / case / "two", progress=False)
    split = out / "dcgan" / "two-split"
    train(case_config("dcgan", STEPS // 2), split, progress=False)
    if dist.get_rank() == 0:
        shutil.copytree(split, out / "dcgan" / "two-then-one")
    dist.barrier()
    train(case_config("dcgan"), split, resume=True, progress=False)
    train(
        dataclasses.replace(case_config("dcgan")), out / "dcgan" / "one-then-two", resume=True, progress=False
    )
    replica_check(out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    exit_rank(0)  # as the CLI's ranks do: no finalization with DDP's gloo threads still running
