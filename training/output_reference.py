"""The manifest's `output_reference`: statistics of the exported generator's output, for the service's monitor.

`python -m training output-reference --model-dir models [--name N [--version V]]` adds the section to existing
versions without re-exporting (the ONNX file and its sha256 are unchanged); `training.export` calls the same
`reference_statistics` on every new export. The outputs come from ONNX Runtime, the latents from
`service.latents` (the rows /generate serves), the statistics from `service.output_stats` (what the service
computes on what it serves). The bands are measured, not guessed: windows of each size in WINDOWS drawn from
held-out seeds, half of them with every class, half with a single class (conditional models); the band is
their mean +- BAND_SIGMAS standard deviations, never narrower than the range they showed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from service.files import sha256_file
from service.latents import latents
from service.manifest import MANIFEST_FILE, ONNX_FILE, Manifest, load_manifest, save_manifest
from service.model_folders import version_dirs
from service.output_stats import (
    DIRECTIONS,
    PIXEL_SIDE,
    PROJECTION_SEED,
    QUANTILES,
    SKETCH_SIDE,
    WINDOWS,
    OutputReference,
    WindowBand,
    drift_statistic,
    mean_pairwise_distance,
    pooled,
    pooled_shape,
    projection,
    projection_sha256,
    residuals,
    sketch,
    window_band,
)

REFERENCE_SAMPLES = 8192
HELD_OUT_SAMPLES = 8192
REFERENCE_SEED = 7_000_001  # seeds of their own: not the 0, 1, 2 ... that examples and tests use
HELD_OUT_SEED = 7_000_002
TRIALS = 200
DIVERSITY_ROWS = 2048  # rows of the reference whose mean pairwise distance is the diversity reference
BATCH = 512

Run = Callable[[dict[str, np.ndarray]], np.ndarray]


class OutputReferenceError(RuntimeError):
    """A version whose reference statistics cannot be computed (missing or changed files)."""


def onnx_runner(path: Path) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        (x,) = session.run(["x"], feeds)
        return np.asarray(x)

    return run


def outputs(run: Run, manifest: Manifest, seed: int, n: int, matrix: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sketches (n, K), groups (n,), and the pooled pixels' sum and sum of squares, batch by batch."""
    k = manifest.num_classes
    sketches, groups = np.empty((n, matrix.shape[1]), np.float32), np.zeros(n, np.int64)
    total = np.zeros(int(np.prod(pooled_shape(manifest.output_shape, PIXEL_SIDE))), np.float64)
    squares = np.zeros_like(total)
    for start in range(0, n, BATCH):
        rows = min(BATCH, n - start)
        feeds = {"z": latents(seed, start, rows, manifest.z_dim)}
        if k:  # classes cycle by index, as /generate without labels
            labels = np.arange(start, start + rows) % k
            feeds["c"] = np.eye(k, dtype=np.float32)[labels]
            groups[start : start + rows] = labels
        x = run(feeds)
        sketches[start : start + rows] = sketch(x, matrix)
        pixels = pooled(x, PIXEL_SIDE).astype(np.float64)
        total += pixels.sum(axis=0)
        squares += (pixels**2).sum(axis=0)
    return sketches, groups, total, squares


def measure_bands(
    held: np.ndarray, groups: np.ndarray, classes: int, diversity_reference: float, trials: int, seed: int
) -> list[WindowBand]:
    """The range of drift and diversity that healthy windows of each size show."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(groups == g) for g in range(classes)]
    bands = []
    for window in (w for w in WINDOWS if w <= len(held) // 2):
        drift, diversity = [], []
        for trial in range(trials):
            pool = by_class[(trial // 2) % classes] if classes and trial % 2 else None
            if pool is None or len(pool) < window:
                pool = np.arange(len(held))
            r = held[rng.choice(pool, window, replace=False)]
            drift.append(drift_statistic(r))
            diversity.append(mean_pairwise_distance(r) / diversity_reference)
        bands.append(window_band(window, drift, diversity))
    return bands


def reference_statistics(
    run: Run,
    manifest: Manifest,
    *,
    samples: int = REFERENCE_SAMPLES,
    held_out: int = HELD_OUT_SAMPLES,
    trials: int = TRIALS,
    command: str | None = None,
) -> OutputReference:
    started = time.perf_counter()
    sketch_shape = pooled_shape(manifest.output_shape, SKETCH_SIDE)
    matrix = projection(int(np.prod(sketch_shape)), DIRECTIONS, PROJECTION_SEED)
    sketches, groups, total, squares = outputs(run, manifest, REFERENCE_SEED, samples, matrix)
    count = max(manifest.num_classes, 1)
    mean = np.stack([sketches[groups == g].mean(axis=0) for g in range(count)])
    std = np.stack([np.maximum(sketches[groups == g].std(axis=0), 1e-6) for g in range(count)])
    standardised = residuals(sketches, groups, mean, std)
    subset = np.random.default_rng(0).choice(samples, min(samples, DIVERSITY_ROWS), replace=False)
    diversity_reference = mean_pairwise_distance(standardised[subset])
    held_sketch, held_groups, _, _ = outputs(run, manifest, HELD_OUT_SEED, held_out, matrix)
    held = residuals(held_sketch, held_groups, mean, std)
    bands = measure_bands(held, held_groups, manifest.num_classes, diversity_reference, trials, seed=1)
    pixel_mean = total / samples
    pixel_std = np.sqrt(np.maximum(squares / samples - pixel_mean**2, 0.0))

    def rounded(values: np.ndarray) -> list[float]:
        return [round(float(v), 6) for v in values]

    return OutputReference(
        sketch_shape=sketch_shape,
        directions=DIRECTIONS,
        projection_seed=PROJECTION_SEED,
        projection_sha256=projection_sha256(matrix),
        samples=samples,
        seed=REFERENCE_SEED,
        held_out_samples=held_out,
        held_out_seed=HELD_OUT_SEED,
        mean=[rounded(row) for row in mean],
        std=[rounded(row) for row in std],
        quantiles={f"{q:g}": rounded(np.quantile(sketches, q, axis=0)) for q in QUANTILES},
        mean_pairwise_distance=round(mean_pairwise_distance(sketches[subset]), 6),
        diversity_reference=round(diversity_reference, 6),
        pixel_shape=pooled_shape(manifest.output_shape, PIXEL_SIDE),
        pixel_mean=rounded(pixel_mean),
        pixel_std=rounded(pixel_std),
        bands=bands,
        computed_at=datetime.now(UTC),
        command=command,
        wall_time_s=round(time.perf_counter() - started, 3),
    )


def with_reference(manifest: Manifest, reference: OutputReference) -> Manifest:
    """The manifest with its output_reference section replaced; every other field as it was."""
    return Manifest.model_validate(manifest.model_dump() | {"output_reference": reference.model_dump()})


def add_reference(version_dir: Path, command: str | None = None, **sizes: int) -> Manifest:
    """Compute and write one version's output_reference; its ONNX file must still match the manifest."""
    manifest = load_manifest(version_dir / MANIFEST_FILE)
    if sha256_file(version_dir / ONNX_FILE) != manifest.onnx_sha256:
        raise OutputReferenceError(f"{version_dir / ONNX_FILE}: sha256 differs from the manifest")
    reference = reference_statistics(onnx_runner(version_dir / ONNX_FILE), manifest, command=command, **sizes)
    updated = with_reference(
        load_manifest(version_dir / MANIFEST_FILE), reference
    )  # re-read: newest sections
    save_manifest(updated, version_dir / MANIFEST_FILE)
    return updated


def add_references(model_dir: Path, name: str | None, version: int | None, command: str | None) -> list[str]:
    """Every selected version's section written; one report line each."""
    chosen = [v for v in version_dirs(model_dir) if name in (None, v.name) and version in (None, v.version)]
    if not chosen:
        raise OutputReferenceError(f"{model_dir}: no version matches name={name} version={version}")
    lines = []
    for found in chosen:
        reference = add_reference(found.path, command).output_reference
        assert reference is not None
        band = reference.band(512) or reference.bands[-1]
        lines.append(
            f"{found.name} v{found.version}: {reference.samples} + {reference.held_out_samples} rows in "
            f"{reference.wall_time_s:.1f} s; W={band.window}: drift <= {band.drift_high:.3f}, diversity "
            f"{band.diversity_low:.3f} .. {band.diversity_high:.3f}"
        )
    return lines
