"""The second, independent evaluator: another architecture, another seed, and no choice made on the test split.

Image figures are reported in two feature spaces, each beside its own real-vs-real floor, so that a model
cannot pass by fitting the quirks of one network. The first evaluator (feature_net.EvaluatorNet, no
BatchNorm, a flattened 9216-d conv map into fc 128) trained on the whole train split. This one is a BatchNorm
CNN: three 3×3 conv + BN + ReLU stages (32, 64, 128 channels), each followed by a 2×2 max-pool (28 → 14 → 7 →
3), then fc 128 + BN + ReLU (the 128-d feature layer), dropout 0.3, fc 10. It trains on the train split minus
the validation split (`training.splits`); the epoch kept is the one with the best validation accuracy, and the
test split is used once, to report the accuracy and the floor of the network that was kept.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import to_float
from training.feature_net import EVALUATOR_DIR, accuracy, export_evaluator, update_info
from training.splits import test_split, train_minus_validation, train_split, validation_split

SPACE = "independent"  # metrics in this space are named `independent.<metric>`
FEATURE_SPACE = "independent evaluator fc 128 after BatchNorm + ReLU (3-stage BN CNN, seed 1)"
MIN_ACCURACY = {"fashion-mnist": 0.93, "mnist": 0.985}
DEFAULT_EPOCHS = {"fashion-mnist": 10, "mnist": 20}


def _stage(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class IndependentNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.convs = nn.Sequential(_stage(1, 32), _stage(32, 64), _stage(64, 128))  # 128 x 3 x 3
        self.fc1 = nn.Sequential(nn.Linear(1152, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.fc1(torch.flatten(self.convs(x), 1))  # (N, 128)
        return self.fc2(self.dropout(features)), features


def _augment(x: torch.Tensor, data: str, gen: torch.Generator) -> torch.Tensor:
    """MNIST: shifts of up to 2 pixels (3,500 digits need them). Fashion-MNIST: a random horizontal flip."""
    if data == "mnist":
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def train_independent(
    data: str, epochs: int, seed: int = 1, batch_size: int = 128
) -> tuple[nn.Module, dict[str, Any]]:
    """Train on train-minus-validation; keep the epoch with the best validation accuracy. Threads: torch's
    default, which follows OMP_NUM_THREADS."""
    torch.manual_seed(seed)
    x, y = train_minus_validation(data)
    val_x, val_y = validation_split(data)
    net = IndependentNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps_per_epoch = len(x) // batch_size
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, 0, {})
    history = []
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            logits, _ = net(_augment(to_float(x[index]), data, gen))
            loss = F.cross_entropy(logits, y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_accuracy = accuracy(net.eval(), val_x, val_y)
        history.append(round(val_accuracy, 5))
        if val_accuracy > best[0]:
            best = (val_accuracy, epoch + 1, {k: v.clone() for k, v in net.state_dict().items()})
    net.load_state_dict(best[2])
    return net.eval(), {"validation_accuracy": round(best[0], 5), "kept_epoch": best[1], "history": history}


def real_floor(directory: Path, data: str, seed: int = 0) -> dict[str, float]:
    """FD of the train split (len(test) images drawn with `seed`) against the test split, in this space."""
    from training.feature_net import Evaluator
    from training.metrics import frechet_distance

    evaluator = Evaluator(data, directory)
    test_x, _ = test_split(data)
    train_x, _ = train_split(data)
    index = np.random.default_rng(seed).choice(len(train_x), len(test_x), replace=False)
    _, test_f = evaluator.run(to_float(test_x).numpy())
    _, train_f = evaluator.run(to_float(train_x[index]).numpy())
    return {"fd_floor": round(frechet_distance(test_f, train_f), 6), "floor_samples": len(test_x)}


def build_independent(
    data: str,
    epochs: int | None = None,
    seed: int = 1,
    out_dir: Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    if data not in MIN_ACCURACY:
        raise ValueError(f"no independent evaluator for '{data}'; choose one of {sorted(MIN_ACCURACY)}")
    epochs = epochs or DEFAULT_EPOCHS[data]
    started = time.perf_counter()
    net, record = train_independent(data, epochs, seed)
    test_x, test_y = test_split(data)
    test_accuracy = accuracy(net, test_x, test_y)  # the one use of the test split
    meta = {
        "space": SPACE,
        "architecture": "3 x (conv 3x3 + BN + ReLU + max-pool 2) [32, 64, 128] -> fc 128 + BN + ReLU -> fc 10",
        "trained_on": "train split minus the validation split (training.splits)",
        "epochs": epochs,
        "seed": seed,
        **record,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "command": command,
    }
    directory = out_dir or EVALUATOR_DIR / data / SPACE
    export_evaluator(net, data, test_accuracy, meta | {"feature_space": FEATURE_SPACE}, directory)
    floor = real_floor(directory, data)
    update_info(directory, floor)
    if test_accuracy < MIN_ACCURACY[data]:
        raise RuntimeError(
            f"{data} independent evaluator reached {test_accuracy:.4f} < {MIN_ACCURACY[data]} test accuracy "
            f"(written to {directory} for inspection)"
        )
    return {"data": data, "test_accuracy": test_accuracy, **meta, **floor}
