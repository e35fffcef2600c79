"""Evaluator networks the project trains itself (no Inception weights exist offline), shipped as ONNX.

The topology is pytorch/examples' MNIST `Net`: conv 32 → conv 64 → max-pool → fc 128 → fc 10. Its 128-d
penultimate layer (after ReLU) is the feature space of our Fréchet distance, KID and k-NN metrics;
its logits classify. Figures in this space are not comparable with Inception FIDs.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.files import atomic_write_bytes, sha256_file
from training.data import make_source
from training.device import cpu_threads, library_versions
from training.export import onnx_export

EVALUATOR_DIR = Path(__file__).resolve().parent / "evaluators"
FEATURE_SPACE = "evaluator fc1: 128-d, after ReLU (pytorch/examples MNIST Net topology)"
MIN_ACCURACY = {"fashion-mnist": 0.90, "mnist": 0.97}


class EvaluatorNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)  # state size. 32 x 26 x 26
        self.conv2 = nn.Conv2d(32, 64, 3, 1)  # state size. 64 x 24 x 24 -> pool 64 x 12 x 12
        self.dropout1, self.dropout2 = nn.Dropout(0.25), nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)  # the feature layer
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        features = F.relu(self.fc1(torch.flatten(self.dropout1(h), 1)))  # (N, 128)
        return self.fc2(self.dropout2(features)), features


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translations of up to 2 pixels: the 4,000-digit MNIST subset needs them to generalise."""
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_evaluator(data: str, epochs: int, seed: int = 0, batch_size: int = 128) -> tuple[nn.Module, float]:
    """Train on the train split; returns the network and its accuracy on the test split."""
    cpu_threads(None)
    torch.manual_seed(seed)
    train, test = make_source(data, seed=seed), make_source(data, split="test")
    net = EvaluatorNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps_per_epoch = len(train) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(epochs * steps_per_epoch):
        x, y = train.batch(step, batch_size)
        assert y is not None
        logits, _ = net(_shift(x, gen) if data == "mnist" else x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return net.eval(), accuracy(net, test.x, test.y)  # type: ignore[attr-defined]


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    predictions = torch.cat([net(chunk.float().div(127.5).sub(1))[0].argmax(1) for chunk in x.split(2000)])
    return float((predictions == y).float().mean())


def export_evaluator(
    net: nn.Module, data: str, test_accuracy: float, meta: dict[str, Any], out_dir: Path
) -> Path:
    """model.onnx (input x [N, 1, 28, 28] in [-1, 1]; outputs logits, features) and evaluator.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    onnx_export(net, (torch.zeros(2, 1, 28, 28),), path, ["x"], ["logits", "features"])
    info = {
        "dataset": data,
        "input": {"name": "x", "shape": [1, 28, 28], "value_range": [-1.0, 1.0]},
        "outputs": ["logits", "features"],
        "feature_space": FEATURE_SPACE,
        "test_accuracy": round(test_accuracy, 5),
        "onnx_sha256": sha256_file(path),
        "created_at": datetime.now(UTC).isoformat(),
        "library_versions": library_versions(),
        **meta,
    }
    atomic_write_bytes(out_dir / "evaluator.json", (json.dumps(info, indent=2) + "\n").encode())
    return out_dir


def update_info(directory: Path, extra: dict[str, Any]) -> None:
    """Add entries to a shipped evaluator's evaluator.json (its floor, once it can be measured)."""
    path = directory / "evaluator.json"
    info = json.loads(path.read_text()) | extra
    atomic_write_bytes(path, (json.dumps(info, indent=2) + "\n").encode())


def build(
    data: str, epochs: int, seed: int, out_dir: Path | None = None, command: str | None = None
) -> dict[str, Any]:
    if data not in MIN_ACCURACY:
        raise ValueError(f"no evaluator for '{data}'; choose one of {sorted(MIN_ACCURACY)}")
    started = time.perf_counter()
    net, test_accuracy = train_evaluator(data, epochs, seed)
    if test_accuracy < MIN_ACCURACY[data]:
        raise RuntimeError(
            f"{data} evaluator reached {test_accuracy:.4f} < {MIN_ACCURACY[data]} test accuracy"
        )
    meta = {
        "epochs": epochs,
        "seed": seed,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "command": command,
    }
    export_evaluator(net, data, test_accuracy, meta, out_dir or EVALUATOR_DIR / data)
    return {"data": data, "test_accuracy": test_accuracy, **meta}


# The first evaluator (this module's net) and the second (training.independent_evaluator).
SPACES = ("first", "independent")


def evaluator_dir(data: str, space: str = "first") -> Path:
    """training/evaluators/<data>/ for the first evaluator, training/evaluators/<data>/<space>/ for another."""
    if space not in SPACES:
        raise ValueError(f"unknown evaluator space '{space}'; choose one of {list(SPACES)}")
    base = EVALUATOR_DIR / ("mnist" if data == "stacked-mnist" else data)
    return base if space == "first" else base / space


class Evaluator:
    """A shipped evaluator, run through ONNX Runtime: classify and embed images in [-1, 1]."""

    def __init__(self, data: str, directory: Path | None = None, space: str = "first") -> None:
        import onnxruntime as ort

        directory = directory or evaluator_dir(data, space)
        info_path = directory / "evaluator.json"
        if not info_path.is_file():
            raise FileNotFoundError(
                f"{info_path}: no evaluator; build it with `python -m training evaluator`"
            )
        self.info = json.loads(info_path.read_text())
        if sha256_file(directory / "model.onnx") != self.info["onnx_sha256"]:
            raise ValueError(f"{directory / 'model.onnx'}: sha256 differs from evaluator.json")
        self.session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])

    def run(self, x: np.ndarray, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """(logits, features) for (N, 1, 28, 28) float32 images in [-1, 1]."""
        outputs = [
            self.session.run(None, {"x": x[i : i + chunk].astype(np.float32)})
            for i in range(0, len(x), chunk)
        ]
        return np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs])
