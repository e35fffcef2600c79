"""`python -m training select`: choose a snapshot with one evaluator, report it with the other.

No choice is made on the figures that are reported. Each snapshot (a folder holding a `checkpoint.pt`) is
scored with the FIRST evaluator, against the VALIDATION split (a fixed part of the train split), on the
validation sample seeds (`training.splits.VALIDATION_SEEDS`), averaged over them. The chosen snapshot is the
one that passes the most of the protocol's first-space gates, then the best on the protocol's primary figure.
Only that snapshot is exported, and its reported figures come from `training.evaluate`: the independent
evaluator on the held-out seed and the test split (and the first evaluator on the test split), written into
its manifest. `selection.json` in the run directory keeps every candidate's validation figures and the choice.

Snapshots come from `--snapshots DIR ...` (copies of a run directory, as the docs' runs were made), or the
selector makes them: `--every K --steps S` resumes the run in K-step segments up to S and copies each
checkpoint to `RUN/snapshots/<step>/` before scoring it (the metric-driven snapshot selection StyleGAN runs
inside its training loop, here around it).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.files import atomic_write_bytes
from service.manifest import Manifest
from training.checkpoint import CHECKPOINT, ResumeError
from training.evaluate import GATES, evaluate
from training.export import export, load_generator
from training.image_protocols import evaluate_images, evaluate_stacked
from training.splits import VALIDATION_SEEDS

SELECTION_FILE = "selection.json"
# The figure that breaks ties between snapshots passing as many gates, and its direction.
PRIMARY = {
    "fashion-mnist": ("fd_ratio", "min"),
    "mnist": ("fd_ratio", "min"),
    "stacked-mnist": ("stacked_kl", "min"),
}


class TorchSampler:
    """The ONNX Sampler's latents and labels, drawn from a checkpoint's generator without exporting it."""

    def __init__(self, snapshot: Path) -> None:
        self.model, self.run = load_generator(snapshot)
        self.spec = self.run.spec

    @torch.no_grad()
    def __call__(self, n: int, seed: int, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray | None]:
        rng = np.random.default_rng(seed)
        classes = self.spec.num_classes
        labels = rng.permutation(np.arange(n) % classes) if classes else None
        out = []
        for start in range(0, n, chunk):
            z = torch.from_numpy(
                rng.standard_normal((min(chunk, n - start), self.spec.z_dim), dtype=np.float32)
            )
            if labels is None:
                out.append(self.model(z).numpy())
            else:
                c = torch.from_numpy(np.eye(classes, dtype=np.float32)[labels[start : start + chunk]])
                out.append(self.model(z, c).numpy())
        return np.concatenate(out), labels


def _gate_key(data: str, conditional: bool) -> str:
    return f"{data}/conditional" if conditional and f"{data}/conditional" in GATES else data


def validation_metrics(snapshot: Path, samples: int | None = None) -> dict[str, float]:
    """The first evaluator's figures on the validation split, averaged over the validation seeds."""
    sample = TorchSampler(snapshot)
    data = sample.run.cfg.data
    runs = []
    for seed in VALIDATION_SEEDS:
        if data == "stacked-mnist":
            metrics = evaluate_stacked(sample, "first", seed, samples, floor=False)[0]
        elif data in ("fashion-mnist", "mnist"):
            metrics = evaluate_images(sample, data, "first", seed, samples, split="validation")[0]
        else:
            raise ValueError(f"no snapshot selection for data '{data}' (image data only)")
        runs.append(metrics)
    return {name: float(np.mean([r[name] for r in runs])) for name in runs[0]}


def rank(data: str, conditional: bool, candidates: dict[str, dict[str, float]]) -> list[str]:
    """Snapshots best first: most first-space gates passed, then the primary figure."""
    gates = GATES[_gate_key(data, conditional)]
    primary, direction = PRIMARY[data]

    def passed(metrics: dict[str, float]) -> int:
        return sum((metrics[m] <= t) if op == "<=" else (metrics[m] >= t) for m, op, t in gates)

    def key(label: str) -> tuple[int, float]:
        value = candidates[label][primary]
        return (-passed(candidates[label]), value if direction == "min" else -value)

    return sorted(candidates, key=key)


def make_snapshots(run_dir: Path, every: int, steps: int, command: str | None) -> list[Path]:
    """Resume the run in `every`-step segments up to `steps`, keeping a copy of each checkpoint."""
    import dataclasses

    from training.config import TrainConfig
    from training.loop import train

    saved = run_dir / "config.json"
    if not saved.is_file():
        raise ResumeError(f"{saved}: not found; is {run_dir} a run directory?")
    cfg = TrainConfig.from_saved(json.loads(saved.read_text()))
    state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    snapshots = []
    for target in range(int(state["step"]) + every, steps + every, every):
        target = min(target, steps)
        train(dataclasses.replace(cfg, steps=target), run_dir, resume=True, command=command, progress=False)
        snapshot = run_dir / "snapshots" / str(target)
        snapshot.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run_dir / CHECKPOINT, snapshot / CHECKPOINT)
        snapshots.append(snapshot)
        if target >= steps:
            break
    return snapshots


def select(
    run_dir: Path,
    snapshots: list[Path],
    model_dir: Path,
    name: str,
    samples: int | None = None,
    command: str | None = None,
) -> tuple[dict[str, Any], Manifest]:
    """Score every snapshot on validation, export the chosen one, report it on held-out seeds and test."""
    if not snapshots:
        raise ValueError("no snapshots to choose from: pass --snapshots, or --every and --steps")
    started = time.perf_counter()
    candidates = {str(path): validation_metrics(path, samples) for path in snapshots}
    first = TorchSampler(snapshots[0])
    data, conditional = first.run.cfg.data, first.spec.num_classes > 0
    order = rank(data, conditional, candidates)
    chosen = Path(order[0])
    target = export(chosen, model_dir, name, command=command)
    manifest = evaluate(model_dir, name, int(target.name), command=command, samples=samples)
    record = {
        "rule": "most first-space gates passed on validation, then the best "
        f"{PRIMARY[data][0]} ({PRIMARY[data][1]})",
        "chosen_by": {"evaluator": "first", "split": "validation", "seeds": list(VALIDATION_SEEDS)},
        "reported_by": [
            {"evaluator": "independent", "split": "test", "seed": s.seed} for s in manifest.evaluation.spaces
        ]
        if manifest.evaluation
        else [],
        "samples": samples,
        "candidates": {label: {k: round(v, 6) for k, v in m.items()} for label, m in candidates.items()},
        "order": order,
        "chosen": str(chosen),
        "exported": str(target),
        "reported": manifest.metrics,
        "gates": [g.model_dump() for g in manifest.gate_results()],
        "wall_time_s": round(time.perf_counter() - started, 1),
        "command": command,
    }
    atomic_write_bytes(run_dir / SELECTION_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return record, manifest
