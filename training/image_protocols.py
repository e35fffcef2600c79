"""Image protocols in one evaluator's feature space, each figure beside its real-vs-real floor.

`evaluate.py` runs them once per space: the first evaluator (names as they are, `fd`, `stacked_kl`, ...) and
the independent one (`independent.fd`, ...), on different sample seeds. A figure's floor is what real data
scores under the same protocol, at the same N, in the same space:
- Fréchet distance, KID, precision/recall, density/coverage: N train images against the test split.
- class accuracy (conditional models): the evaluator's accuracy on the test split.
- confident_pct (share of samples whose top class probability is at least 0.9) and class_kl (KL of the
  predicted-class histogram to uniform): the test split's images.
- stacked MNIST modes, KL and Vendi score: N stacks of held-out (test split) digits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from training.data import make_source, to_float
from training.feature_net import Evaluator
from training.metrics import (
    density_coverage,
    frechet_distance,
    kid,
    kl_to_uniform,
    precision_recall,
    stacked_modes,
    stacked_vendi,
)
from training.splits import test_split, train_minus_validation, train_split, validation_split

Sample = Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]
CONFIDENT = 0.9  # a sample is "confidently classified" at this top-class probability or more


def prefixed(space: str) -> str:
    return "" if space == "first" else f"{space}."


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def feature_metrics(real: np.ndarray, fake: np.ndarray, suffix: str = "") -> dict[str, float]:
    kid_mean, _ = kid(real, fake, subsets=100, size=min(1000, len(real) // 2, len(fake) // 2))
    precision, recall = precision_recall(real, fake, k=3)
    density, coverage = density_coverage(real, fake, k=5)
    values = {"fd": frechet_distance(real, fake), "kid": kid_mean, "precision": precision, "recall": recall}
    values |= {"density": density, "coverage": coverage}
    return {f"{name}{suffix}": value for name, value in values.items()}


def classifier_metrics(logits: np.ndarray, suffix: str = "") -> dict[str, float]:
    """How sure the evaluator is about the images and how evenly they spread over its classes."""
    probabilities = softmax(logits)
    counts = np.bincount(probabilities.argmax(1), minlength=probabilities.shape[1])
    return {
        f"confident_pct{suffix}": 100.0 * float((probabilities.max(1) >= CONFIDENT).mean()),
        f"class_kl{suffix}": kl_to_uniform(counts),
    }


def _reference(data: str, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(real images, their labels, the images the floor draws from) for the test or the validation split."""
    if split == "validation":
        real, labels = validation_split(data)
        return real, labels, train_minus_validation(data)[0]
    if split != "test":
        raise ValueError(f"unknown reference split '{split}'; choose 'test' or 'validation'")
    real, labels = test_split(data)
    return real, labels, train_split(data)[0]


def evaluate_images(
    sample: Sample, data: str, space: str, seed: int, n: int | None = None, split: str = "test"
) -> tuple[dict[str, float], str, Evaluator, int]:
    """(metrics named for the space, reference, evaluator, samples used) against the test split, or, for
    choices, the validation split (its floor: the train split's other images)."""
    evaluator = Evaluator(data, space=space)
    reference_x, reference_y, pool = _reference(data, split)
    n = min(n or len(reference_x), len(reference_x))
    real_x = to_float(reference_x[:n]).numpy()
    floor_index = np.random.default_rng(seed).choice(len(pool), n, replace=False)
    floor_x = to_float(pool[floor_index]).numpy()
    real_logits, real_f = evaluator.run(real_x)
    _, floor_f = evaluator.run(floor_x)
    fake_x, labels = sample(n, seed)
    logits, fake_f = evaluator.run(fake_x)
    metrics = feature_metrics(real_f, fake_f) | feature_metrics(real_f, floor_f, "_floor")
    metrics["fd_ratio"] = metrics["fd"] / max(metrics["fd_floor"], 1e-12)
    if labels is not None:
        metrics["class_accuracy"] = float((logits.argmax(1) == labels).mean())
        real_y = reference_y[:n].numpy()
        metrics["class_accuracy_floor"] = float((real_logits.argmax(1) == real_y).mean())
    else:
        metrics |= classifier_metrics(logits) | classifier_metrics(real_logits, "_floor")
    reference = f"{data} {split} split ({n}); floor: {n} train images (seed {seed}) vs the {split} split"
    prefix = prefixed(space)
    return {f"{prefix}{k}": v for k, v in metrics.items()}, reference, evaluator, n


STACKED_SAMPLES = 26_000


def evaluate_stacked(
    sample: Sample, space: str, seed: int, n: int | None = None, floor: bool = True
) -> tuple[dict[str, float], str, Evaluator, int]:
    """Modes of 1,000, KL to uniform and the Vendi score of the class probabilities, per channel. They need
    no reference data; `floor=False` skips the real stacks (for choices, which must not see the test split)."""
    evaluator = Evaluator("stacked-mnist", space=space)
    n = n or STACKED_SAMPLES

    def scores(x: np.ndarray) -> tuple[int, float, float]:
        channels = [softmax(evaluator.run(np.ascontiguousarray(x[:, k : k + 1]))[0]) for k in range(3)]
        modes, kl = stacked_modes(np.stack([p.argmax(1) for p in channels], axis=1))
        return modes, kl, stacked_vendi(channels)

    modes, kl, vendi = scores(sample(n, seed)[0])
    metrics = {"stacked_modes": float(modes), "stacked_kl": kl, "stacked_vendi": vendi}
    if floor:  # real stacked triples (held-out digits) through the same classifier at the same N
        real, _ = make_source("stacked-mnist", split="test", seed=seed).batch(0, n)
        floor_modes, floor_kl, floor_vendi = scores(real.numpy())
        metrics |= {"stacked_modes_floor": float(floor_modes), "stacked_kl_floor": floor_kl}
        metrics["stacked_vendi_floor"] = floor_vendi
    reference = f"1,000 digit triples, uniform; floor: {n} real stacked triples of test-split digits"
    prefix = prefixed(space)
    return {f"{prefix}{k}": v for k, v in metrics.items()}, reference, evaluator, n
