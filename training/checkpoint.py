"""The run's checkpoint: one file, written atomically, that holds everything an exact resume and an export
need (weights, optimiser and RNG states, counters, the resolved config and the network spec)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from service.files import atomic_write_bytes
from training.config import TrainConfig

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# Fields that may change when a run is resumed; any other difference is refused. The learning rates and
# the R1 weight are among them so that a run can follow a schedule (find the modes, then sharpen them at a
# lower rate); the resume command that changed them is kept in the checkpoint's provenance.
SCHEDULE = {"lr_g", "lr_d", "r1_gamma"}
RESUMABLE = {"steps", "log_every", "sample_every", "checkpoint_every", "device", "num_threads", *SCHEDULE}


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
