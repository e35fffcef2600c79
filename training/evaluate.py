"""`python -m training evaluate`: quality of an exported generator, measured on the served ONNX artifact.

The protocol follows the data the model was trained on (from its manifest):
- `ring8`, `grid25`: VEEGAN/PacGAN — 2,500 samples per seed, mean ± standard error over seeds.
- `gauss2`: the same, plus `training.mixture_fit` (log-likelihood gap to a held-out real sample of the same
  size, weights, means and covariances recovered).
- `fashion-mnist`, `mnist`, `stacked-mnist`: `training.image_protocols`, run twice: in the first evaluator's
  feature space on sample seed TEST_SEED, and in the independent evaluator's (metrics `independent.<name>`)
  on the held-out sample seed HELD_OUT_SEED, which no choice has seen. Every figure has its real-vs-real floor
  beside it in its own space; every gate is set in both spaces with the same threshold.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from service.files import sha256_file
from service.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    Evaluation,
    Manifest,
    SpaceEvaluation,
    load_manifest,
    save_manifest,
)
from service.model_folders import version_path
from service.quality_gates import QualityGate
from training.data import MIXTURES
from training.feature_net import FEATURE_SPACE
from training.image_protocols import evaluate_images, evaluate_stacked, prefixed
from training.independent_evaluator import FEATURE_SPACE as INDEPENDENT_FEATURE_SPACE
from training.independent_evaluator import SPACE as INDEPENDENT
from training.metrics import PERFECT_SPREAD, mixture_scores
from training.mixture_fit import fit_metrics
from training.splits import HELD_OUT_SEED, TEST_SEED

# The targets of the quality issues, written into the manifest as gates; image gates hold in both spaces.
GATES: dict[str, list[tuple[str, str, float]]] = {
    "ring8": [("modes", ">=", 8), ("high_quality_pct", ">=", 97.0), ("reverse_kl", "<=", 0.005)],
    "grid25": [("modes", ">=", 25), ("high_quality_pct", ">=", 97.0), ("reverse_kl", "<=", 0.01)],
    # gauss2 (training.mixture_fit), fixed before any model was trained from a perfect sampler's figures (5
    # seeds: |gap| 0.02, weight error 0.007, mean error 0.05, cov error 0.07): |log-lik gap| <= 0.1 nats is
    # ±5 % in scale, and each weight within 0.45-0.55; one mode, or 5 % too wide, fails (tests/test_gauss2.py).
    "gauss2": [
        ("modes", ">=", 2),
        ("loglik_gap_abs", "<=", 0.1),
        ("weight_error_max", "<=", 0.05),
        ("mean_error_max", "<=", 0.2),
        ("cov_error_max", "<=", 0.25),
    ],
    "fashion-mnist": [("fd_ratio", "<=", 3.0)],
    # Issue 21 asks class accuracy >= 0.92 in both evaluators (it was >= 0.90 before).
    "fashion-mnist/conditional": [("class_accuracy", ">=", 0.92), ("fd_ratio", "<=", 3.0)],
    # Vendi: above PresGAN's 866.6 (the figure issue 21 quotes from the Vendi Score paper).
    "stacked-mnist": [
        ("stacked_modes", ">=", 1000),
        ("stacked_kl", "<=", 0.03),
        ("stacked_vendi", ">=", 866.6),
    ],
    # The vanilla MLP GAN, issue 21's targets: clean digits (>= 90 % of samples classified with >= 0.9
    # confidence), a class histogram within KL 0.02 of uniform, recall >= 0.5, FD <= 5x its floor; and the
    # earlier gate, at least half of its samples on the real digits' feature manifold.
    "mnist": [
        ("precision", ">=", 0.5),
        ("confident_pct", ">=", 90.0),
        ("class_kl", "<=", 0.02),
        ("recall", ">=", 0.5),
        ("fd_ratio", "<=", 5.0),
    ],
}
IMAGE_DATA = ("fashion-mnist", "mnist", "stacked-mnist")
SPACES = {"first": (TEST_SEED, FEATURE_SPACE), INDEPENDENT: (HELD_OUT_SEED, INDEPENDENT_FEATURE_SPACE)}


def protocol_gates(key: str) -> list[tuple[str, str, float]]:
    """The gates of a protocol; image gates once per feature space, with the same thresholds."""
    gates = GATES.get(key, [])
    if key.split("/")[0] not in IMAGE_DATA:
        return gates
    return [(f"{prefixed(space)}{m}", op, t) for space in SPACES for m, op, t in gates]


def _base_data(manifest: Manifest) -> str:
    return manifest.training.data.split(":", 1)[0]


class Sampler:
    """Draws samples from the ONNX model in chunks: z ~ N(0, I), labels balanced over the classes."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        import onnxruntime as ort

        self.manifest = manifest
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, n: int, seed: int, chunk: int = 1000) -> tuple[np.ndarray, np.ndarray | None]:
        rng = np.random.default_rng(seed)
        m = self.manifest
        labels = rng.permutation(np.arange(n) % m.num_classes) if m.num_classes else None
        out = []
        for start in range(0, n, chunk):
            feeds = {"z": rng.standard_normal((min(chunk, n - start), m.z_dim), dtype=np.float32)}
            if labels is not None:
                feeds["c"] = np.eye(m.num_classes, dtype=np.float32)[labels[start : start + chunk]]
            out.append(self.session.run(["x"], feeds)[0])
        return np.concatenate(out), labels


MIXTURE_SAMPLES = 2500  # per seed (VEEGAN/PacGAN)
FITTED = ("gauss2",)  # mixtures few enough and wide enough that their weights and moments are measured


def evaluate_mixture(sample: Sampler, data: str, seeds: int) -> tuple[dict[str, float], str]:
    means_fn, sigma = MIXTURES[data]
    runs = [
        mixture_scores(sample(MIXTURE_SAMPLES, seed)[0], means_fn().numpy(), sigma) for seed in range(seeds)
    ]
    metrics: dict[str, float] = {}
    for name, values in (
        ("modes", [r.modes for r in runs]),
        ("high_quality_pct", [r.high_quality for r in runs]),
        ("reverse_kl", [r.reverse_kl for r in runs]),
        ("spread", [r.spread for r in runs]),
    ):
        metrics[name] = float(np.mean(values))
        metrics[f"{name}_se"] = (
            float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
        )
    metrics["spread_floor"] = PERFECT_SPREAD  # what the data itself scores: a sharper G is not better
    if data in FITTED:  # the mixture recovered: log-likelihood gap to held-out real samples, weights, moments
        points = lambda n, seed: sample(n, seed)[0]  # noqa: E731 (the samples without their labels)
        metrics |= fit_metrics(points, means_fn().numpy(), sigma, MIXTURE_SAMPLES, seeds)
    return metrics, f"{data} mixture means (VEEGAN/PacGAN: 2,500 samples per seed, HQ within 3σ)"


def evaluate(
    model_dir: Path,
    name: str,
    version: int | None = None,
    seeds: int = 5,
    command: str | None = None,
    samples: int | None = None,
    write: bool = True,
) -> Manifest:
    """Measure, write metrics + gates + protocol into the manifest, return it. The ONNX file is untouched.

    `samples` shrinks the image protocols for a quick check; `write=False` measures without saving.
    """
    try:
        path = version_path(Path(model_dir), name, version)
    except LookupError as error:
        raise ValueError(str(error)) from None
    manifest = load_manifest(path / MANIFEST_FILE)
    if sha256_file(path / ONNX_FILE) != manifest.onnx_sha256:
        raise ValueError(f"{path / ONNX_FILE}: sha256 differs from the manifest")
    data = _base_data(manifest)
    sample = Sampler(path / ONNX_FILE, manifest)
    started = time.perf_counter()
    if data in MIXTURES:
        metrics, reference = evaluate_mixture(sample, data, seeds)
        samples, spaces, evaluator = MIXTURE_SAMPLES, [], None
    elif data in IMAGE_DATA:
        metrics, spaces = {}, []
        for space, (seed, feature_space) in SPACES.items():
            if data == "stacked-mnist":
                found, where, used, n = evaluate_stacked(sample, space, seed, samples)
            else:
                found, where, used, n = evaluate_images(sample, data, space, seed, samples)
            metrics |= found
            if space == "first":
                reference, evaluator = where, used
            else:
                spaces.append(
                    SpaceEvaluation(
                        space=space,
                        feature_space=feature_space,
                        evaluator_sha256=used.info["onnx_sha256"],
                        seed=seed,
                        reference=where,
                    )
                )
        samples, seeds = n, 1
    else:
        raise ValueError(f"no evaluation protocol for data '{data}'")
    key = f"{data}/conditional" if manifest.num_classes and f"{data}/conditional" in GATES else data
    evaluation = Evaluation(
        protocol=_protocol(data),
        feature_space=FEATURE_SPACE if evaluator else None,
        evaluator_sha256=evaluator.info["onnx_sha256"] if evaluator else None,
        samples=samples,
        seeds=seeds,
        seed=TEST_SEED if evaluator else None,
        reference=reference,
        spaces=spaces,
        evaluated_at=datetime.now(UTC),
        command=command,
        wall_time_s=round(time.perf_counter() - started, 2),
    )
    updated = Manifest.model_validate(
        manifest.model_dump()
        | {
            "metrics": {k: round(v, 6) for k, v in metrics.items()},
            "gates": gates_for(key, manifest.gates),
            "evaluation": evaluation,
        }
    )
    if write:
        save_manifest(updated, path / MANIFEST_FILE)
    return updated


def gates_for(key: str, recorded: list[QualityGate]) -> list[QualityGate]:
    """The protocol's gates (in every space), then any recorded gate on a metric they do not cover."""
    gates = [QualityGate(metric=m, op=op, threshold=t) for m, op, t in protocol_gates(key)]  # type: ignore[arg-type]
    covered = {g.metric for g in gates}
    return gates + [g for g in recorded if g.metric not in covered]


def _protocol(data: str) -> str:
    if data in MIXTURES:
        veegan = "VEEGAN/PacGAN 2-D mixture: modes, % high quality (within 3σ), reverse KL over HQ samples"
        fitted = "; log-likelihood gap to held-out real samples, weights, means, covariances"
        return veegan + fitted if data in FITTED else veegan
    if data == "stacked-mnist":
        return (
            "stacked MNIST: per-channel MNIST evaluator, modes of 1,000, KL to uniform, Vendi score "
            "(probability product kernel, ρ = 1/2, over the class probabilities); in both evaluators"
        )
    return (
        "evaluator-network features: Fréchet distance, KID (cubic, unbiased), PR k=3, DC k=5 (not Inception); "
        "in both evaluators"
    )


def report(manifest: Manifest) -> str:
    """A table of every metric, its floor where there is one, and the gate results."""
    metrics = manifest.metrics
    gates = {g.metric: g for g in manifest.gate_results()}
    lines = [
        f"{manifest.name} v{manifest.version} — {manifest.evaluation.reference if manifest.evaluation else ''}"
    ]
    lines.append(f"{'metric':<32}{'value':>12}{'floor':>12}   gate")
    for name, value in metrics.items():
        if name.endswith("_floor") or name.endswith("_se"):
            continue
        floor = metrics.get(f"{name}_floor")
        se = metrics.get(f"{name}_se")
        shown = f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else "")
        gate = gates.get(name)
        verdict = f"{gate.op} {gate.threshold:g}: {'pass' if gate.passed else 'FAIL'}" if gate else ""
        lines.append(f"{name:<32}{shown:>12}{'' if floor is None else f'{floor:.4f}':>12}   {verdict}")
    return "\n".join(lines)
