"""The perceptual nets the bundled encoders were trained against, shipped in `training/perceptual/` so the
projector has the same losses on a clean clone (run directories are never committed).

Stored as `<data>.npz` (the state dict's float32 arrays, plus `num_classes`, `size` and the validation accuracy;
no pickles), written from an encoder run by `ship(run_dir, data)`:

    python -c "from training.perceptual_store import ship; ship('RUN', 'fashion-mnist')"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.files import atomic_write_bytes
from training.encoder_net import PerceptualNet

SHIPPED = Path(__file__).resolve().parent / "perceptual"


def base_data(data: str) -> str:
    """Stacked MNIST's digits are MNIST's: its encoder trained against the MNIST perceptual net."""
    return "mnist" if data.split(":", 1)[0] == "stacked-mnist" else data.split(":", 1)[0]


def ship(run_dir: str | Path, data: str) -> Path:
    from training.encoder import PERCEPTUAL_FILE

    saved = torch.load(Path(run_dir) / PERCEPTUAL_FILE, weights_only=True)
    arrays = {f"state.{k}": v.numpy() for k, v in saved["state"].items()}
    meta = {"num_classes": saved["num_classes"], "size": saved["size"], "val_accuracy": saved["val_accuracy"]}
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{k: np.asarray(v) for k, v in meta.items()})
    target = SHIPPED / f"{base_data(data)}.npz"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def load_shipped(data: str) -> PerceptualNet | None:
    """The shipped perceptual net for this data set, or None if none is shipped."""
    path = SHIPPED / f"{base_data(data)}.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        net = PerceptualNet(int(saved["num_classes"]), int(saved["size"]))
        state = {
            k.removeprefix("state."): torch.from_numpy(saved[k].copy())
            for k in saved.files
            if k.startswith("state.")
        }
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)
