"""`python -m training utility`: does the synthetic data help a downstream model? Measured, written as `utility`.

One fixed classifier (`UtilityNet`, `CLASSIFIER`: architecture, optimiser, steps, batch and seeds fixed before
anything was measured), trained from scratch for every cell and judged on the real **test** split; nothing is
chosen on it (fixed steps, no early stopping, no tuning).
- TSTR / TRTR: N balanced synthetic rows against the first N/K real training rows of each class.
- Low-data augmentation: k real rows per class (drawn by the classifier seed) alone, against the same rows plus
  10,000 synthetic rows (every batch half real, half synthetic), and plus 10,000 `variations_of` the k real
  rows (their latents from `encoder.onnx`, z + σ·ε, σ = 0.5) when the version has an encoder.
Synthetic rows are the service's: row j of `/augment`'s balanced `per_class` set is class j // per_class with
latent (seed, j) from `service.latents`, and a variation row j is image j // per_image at z + σ·ε(seed, j), as
`service.editing.variations_plan` computes them; all through the served ONNX files, uint8 like `/augment`'s
npz. tests/test_utility.py checks the rows against `/augment`'s bytes.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.latents import latents, sample_latent
from service.manifest import MANIFEST_FILE, Evaluation, Manifest, Utility, load_manifest, save_manifest
from service.quality_gates import QualityGate

SEEDS = (0, 1, 2)  # classifier seeds (and the k-shot draws)
SYNTHETIC_SEED = 20_261_201  # the /augment seed of every synthetic set, fixed before measuring
CLASSIFIER = {
    "architecture": "conv5x5/2(32)+ReLU, conv5x5/2(64)+ReLU, fc(128)+ReLU, fc(K)",
    "optimiser": "Adam, lr 1e-3, betas (0.9, 0.999)",
    "steps": 1500,
    "batch": 64,
    "input": "uint8 pixels / 255",
    "seeds": list(SEEDS),
}
AUGMENT_ROWS = 10_000
SIGMA = 0.5
GATES = [("tstr_ratio_10000", ">=", 0.97), ("gain_k50_synthetic", ">=", 0.03)]  # the issue's goals


class UtilityNet(nn.Module):
    def __init__(self, channels: int, size: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 5, stride=2)  # 28 -> 12
        self.conv2 = nn.Conv2d(32, 64, 5, stride=2)  # 12 -> 4
        side = ((size - 5) // 2 + 1 - 5) // 2 + 1
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(torch.flatten(h, 1))))


def train_and_test(
    train: list[tuple[np.ndarray, np.ndarray]], test: tuple[np.ndarray, np.ndarray], seed: int, classes: int
) -> float:
    """Test accuracy of UtilityNet trained on `train` (one or more (x uint8 NHWC, y) parts; each batch draws
    equally from every part)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    parts = [
        (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()) for x, y in train
    ]
    channels, size = parts[0][0].shape[1], parts[0][0].shape[2]
    net = UtilityNet(channels, size, classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    share = CLASSIFIER["batch"] // len(parts)  # type: ignore[operator]
    for _ in range(int(CLASSIFIER["steps"])):  # type: ignore[call-overload]
        xs, ys = [], []
        for x, y in parts:
            index = torch.randint(len(x), (share,), generator=gen)
            xs.append(x[index])
            ys.append(y[index])
        loss = F.cross_entropy(net(torch.cat(xs).float() / 255), torch.cat(ys))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()
    x_test = torch.from_numpy(test[0]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        predicted = torch.cat([net(x_test[i : i + 1000]).argmax(1) for i in range(0, len(x_test), 1000)])
    return float((predicted.numpy() == test[1]).mean())


def to_uint8(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8, as the service's npz."""
    y = np.clip(np.rint((x + 1.0) * 127.5), 0, 255)
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1)).astype(np.uint8)


class Generator:
    def __init__(self, path: Path, manifest: Manifest) -> None:
        import onnxruntime as ort

        self.manifest = manifest
        options = ort.SessionOptions()
        self.session = ort.InferenceSession(
            str(path / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.encoder = None
        if manifest.encoder is not None:
            self.encoder = ort.InferenceSession(str(path / manifest.encoder.file), options,
                                                providers=["CPUExecutionProvider"])  # fmt: skip

    def decode(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        k = self.manifest.num_classes
        out = []
        for i in range(0, len(z), 500):
            feeds = {"z": z[i : i + 500], "c": np.eye(k, dtype=np.float32)[y[i : i + 500]]}
            out.append(to_uint8(self.session.run(["x"], feeds)[0]))
        return np.concatenate(out)

    def balanced(self, per_class: int, seed: int = SYNTHETIC_SEED) -> tuple[np.ndarray, np.ndarray]:
        """`/augment {"per_class": per_class, "seed": seed}`: every row, uint8 NHWC, and the labels."""
        m = self.manifest
        y = np.repeat(np.arange(m.num_classes), per_class)
        return self.decode(latents(seed, 0, len(y), m.z_dim), y), y

    def variations(self, x: np.ndarray, y: np.ndarray, per_image: int, seed: int = SYNTHETIC_SEED,
                   sigma: float = SIGMA) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """`/augment {"variations_of": {"images": x, "labels": y, "per_image", "sigma"}, "seed"}`: every row."""
        assert self.encoder is not None
        m = self.manifest
        floats = x.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
        c = np.eye(m.num_classes, dtype=np.float32)[y]
        z = np.concatenate([self.encoder.run(["z"], {"x": floats[i : i + 500], "c": c[i : i + 500]})[0]
                            for i in range(0, len(x), 500)])  # fmt: skip
        index = np.arange(len(x) * per_image)
        eps = np.stack([sample_latent(seed, int(j), m.z_dim) for j in index])
        source = index // per_image
        return self.decode((z[source] + sigma * eps).astype(np.float32), y[source]), y[source]


def real_split(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    from training.data import FASHION_MNIST_DIR
    from training.readers import read_idx_pair

    x, y = read_idx_pair(Path(data_dir) if data_dir else FASHION_MNIST_DIR, split)  # type: ignore[arg-type]
    return np.array(x[..., None]), np.array(y)  # writable copies: torch refuses read-only arrays


def first_per_class(y: np.ndarray, per_class: int, classes: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(y == k)[:per_class] for k in range(classes)])


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def measure(path: Path, sizes: tuple[int, ...], shots: tuple[int, ...], log: Any = print,
            data_dir: str | None = None, seeds: tuple[int, ...] = SEEDS) -> dict[str, float]:  # fmt: skip
    manifest = load_manifest(path / MANIFEST_FILE)
    k = manifest.num_classes
    if not k or manifest.training.data.split(":")[0] != "fashion-mnist":
        raise ValueError("the utility protocol is defined for conditional Fashion-MNIST models")
    gen = Generator(path, manifest)
    x_train, y_train = real_split("train", data_dir)
    test = real_split("test", data_dir)
    metrics: dict[str, float] = {}

    def cell(name: str, parts: list[tuple[np.ndarray, np.ndarray]]) -> float:
        started = time.perf_counter()
        mean, se = mean_se([train_and_test(parts, test, seed, k) for seed in seeds])
        metrics[name], metrics[f"{name}_se"] = mean, se
        log(f"{name}: {mean:.4f} ± {se:.4f} ({time.perf_counter() - started:.0f} s)")
        return mean

    for n in sizes:
        real = first_per_class(y_train, n // k, k)
        trtr = cell(f"trtr_accuracy_{n}", [(x_train[real], y_train[real])])
        tstr = cell(f"tstr_accuracy_{n}", [gen.balanced(n // k)])
        metrics[f"tstr_ratio_{n}"] = tstr / trtr
    synthetic = gen.balanced(AUGMENT_ROWS // k)
    for shot in shots:
        alone, with_synthetic, with_variations = [], [], []
        for seed in seeds:
            rng = np.random.default_rng(1000 + seed)
            pick = np.concatenate(
                [rng.choice(np.flatnonzero(y_train == c), shot, replace=False) for c in range(k)]
            )
            few = (x_train[pick], y_train[pick])
            alone.append(train_and_test([few], test, seed, k))
            with_synthetic.append(train_and_test([few, synthetic], test, seed, k))
            if gen.encoder is not None:
                varied = gen.variations(*few, per_image=max(1, AUGMENT_ROWS // len(pick)))
                with_variations.append(train_and_test([few, varied], test, seed, k))
        for name, values in (("real", alone), ("synthetic", with_synthetic), ("variations", with_variations)):
            if values:
                metrics[f"k{shot}_{name}"], metrics[f"k{shot}_{name}_se"] = mean_se(values)
        for name in ("synthetic", "variations"):
            if f"k{shot}_{name}" in metrics:
                gains = [
                    b - a
                    for a, b in zip(
                        alone, with_synthetic if name == "synthetic" else with_variations, strict=True
                    )
                ]
                metrics[f"gain_k{shot}_{name}"], metrics[f"gain_k{shot}_{name}_se"] = mean_se(gains)
        log(
            {
                key: round(v, 4)
                for key, v in metrics.items()
                if key.startswith(f"k{shot}_") or f"_k{shot}_" in key
            }
        )
    return metrics


def evaluate_utility(path: Path, command: str | None = None, sizes: tuple[int, ...] = (10_000, 60_000),
                     shots: tuple[int, ...] = (10, 50, 500), write: bool = True,
                     data_dir: str | None = None, seeds: tuple[int, ...] = SEEDS) -> Manifest:  # fmt: skip
    started = time.perf_counter()
    metrics = measure(path, sizes, shots, data_dir=data_dir, seeds=seeds)
    manifest = load_manifest(path / MANIFEST_FILE)
    gates = [QualityGate.model_validate({"metric": m, "op": op, "threshold": t})
             for m, op, t in GATES if m in metrics]  # fmt: skip
    evaluation = Evaluation(
        protocol="TSTR/TRTR at N balanced rows; k real rows per class alone / + 10,000 synthetic (half of each "
        "batch) / + 10,000 variations_of them (sigma 0.5); fixed classifier, real test split, mean ± SE over seeds",
        samples=max(sizes) if sizes else AUGMENT_ROWS, seeds=len(seeds), reference="fashion-mnist test split",
        evaluated_at=datetime.now(UTC), command=command, wall_time_s=round(time.perf_counter() - started, 1),
    )  # fmt: skip
    utility = Utility(metrics={k: round(v, 6) for k, v in metrics.items()}, gates=gates, evaluation=evaluation,
                      classifier=CLASSIFIER | {"synthetic_seed": SYNTHETIC_SEED, "augment_rows": AUGMENT_ROWS,
                                               "sigma": SIGMA})  # fmt: skip
    updated = Manifest.model_validate(manifest.model_dump() | {"utility": utility.model_dump()})
    if write:
        save_manifest(updated, path / MANIFEST_FILE)
    return updated


def report_utility(manifest: Manifest) -> str:
    """The utility section as lines: each metric (± its standard error) and each gate's result."""
    assert manifest.utility is not None
    m = manifest.utility.metrics
    lines = [f"{manifest.name} v{manifest.version}: downstream utility (real test split)"]
    for key in sorted(k for k in m if not k.endswith("_se")):
        se = m.get(f"{key}_se")
        lines.append(f"  {key}: {m[key]:.4f}" + (f" ± {se:.4f}" if se is not None else ""))
    for gate in manifest.utility.gate_results():
        lines.append(
            f"  gate {gate.metric} {gate.op} {gate.threshold}: {gate.value} ({'pass' if gate.passed else 'fail'})"
        )
    return "\n".join(lines)
