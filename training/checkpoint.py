"""The run's checkpoint: one file, written atomically, that holds everything an exact resume and an export
need (weights, optimiser and RNG states, counters, the resolved config and the network spec)."""

from __future__ import annotations

import dataclasses
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.files import atomic_write_bytes
from training.config import TrainConfig
from training.data import DataSpec
from training.device import library_versions
from training.networks import NetSpec

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# Fields that may change when a run is resumed; any other difference is refused. The learning rates, the R1
# and R2 weights and the DiffAugment policy are among them so that a run can follow a schedule (find the
# modes, then sharpen them at a lower rate or with milder augmentation, as ADA turns its strength down); the
# resume command that changed them is kept in the checkpoint's provenance.
SCHEDULE = {"lr_g", "lr_d", "r1_gamma", "r2_gamma", "diffaug"}
RESUMABLE = {"steps", "log_every", "sample_every", "checkpoint_every", "device", "num_threads", *SCHEDULE}
RESUMABLE |= {"dist_timeout_s"}  # how the ranks wait for each other: nothing the weights depend on


class ResumeError(ValueError):
    """A run directory and a request that do not fit together."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint holds tensors and plain data, never arbitrary pickles."""
    if not path.is_file():
        raise ResumeError(f"{path}: no checkpoint found")
    try:
        state: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ResumeError(f"{path}: unreadable checkpoint: {first_line}") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"{path}: checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    return state


def check_resume(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse to continue a checkpoint with a config that differs outside RESUMABLE."""
    saved = TrainConfig.from_saved(state["config"]).to_dict()
    changed = [
        f"{key} ({saved.get(key)!r} -> {value!r})"
        for key, value in cfg.to_dict().items()
        if key not in RESUMABLE and saved.get(key) != value
    ]
    if changed:
        raise ResumeError(f"{path}: --resume with a different config: {', '.join(changed)}")


@dataclass
class RunRecord:
    """What a run has done, as its checkpoint records it: generator steps, training wall time, every command
    that shaped the weights, and one segment per invocation that trained (with what `auto` resolved to)."""

    step: int = 0
    wall_time_s: float = 0.0
    command: str | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)  # the earlier invocations'
    where: dict[str, Any] = field(default_factory=dict)  # this invocation's device, precision, threads
    first_step: int = 0  # where this invocation began
    first_wall: float = 0.0

    @classmethod
    def resumed(cls, state: dict[str, Any], command: str | None, where: dict[str, Any]) -> RunRecord:
        step, wall_time_s = state["step"], state["wall_time_s"]
        # Provenance keeps every command that shaped the weights: the first run and each resume.
        command = " && ".join(c for c in (state.get("train_command"), command) if c) or None
        segments = list(state.get("segments", []))  # checkpoints from before segments were kept have none
        return cls(step, wall_time_s, command, segments, where, step, wall_time_s)

    def all_segments(self) -> list[dict[str, Any]]:
        """The earlier segments, and this invocation's once it has trained a step."""
        if self.step <= self.first_step:
            return self.segments
        span = {
            "from_step": self.first_step,
            "to_step": self.step,
            "wall_time_s": round(self.wall_time_s - self.first_wall, 3),
        }
        return [*self.segments, span | self.where]


def rng_state(latent_gen: torch.Generator) -> dict[str, Any]:
    """The RNGs a run draws from. On CUDA the one of the device this rank trains on (every rank's is the
    same), first in the list: a resume may put the run on another device or another number of ranks."""
    device = latent_gen.device
    cuda = [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "latent": latent_gen.get_state()}


def restore_rng(rng: dict[str, Any], latent_gen: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    if latent_gen.device.type == "cuda" and rng["cuda"]:
        torch.cuda.set_rng_state(rng["cuda"][0], latent_gen.device)  # older checkpoints: device 0 first
    latent_gen.set_state(rng["latent"])


def checkpoint_state(
    cfg: TrainConfig,
    spec: NetSpec,
    data: DataSpec,
    networks: dict[str, Any],
    record: RunRecord,
    latent_gen: torch.Generator,
    dry_run: bool,
) -> dict[str, Any]:
    """The checkpoint's layout (CHECKPOINT_FORMAT); `networks` are the state dicts G, D, G_ema, opt_g, opt_d,
    C and opt_c (None where a run has no such part)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "step": record.step,
        "wall_time_s": record.wall_time_s,
        "config": cfg.to_dict(),
        "net_spec": dataclasses.asdict(spec),
        "data_spec": dataclasses.asdict(data),
        **networks,
        "rng": rng_state(latent_gen),
        "train_command": record.command,
        "segments": record.all_segments(),
        "dry_run": dry_run,
        "library_versions": library_versions(),
    }
