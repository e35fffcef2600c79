"""The optional encoder of a model version: validated as strictly as the generator, batched like it.

A version whose encoder is missing or bad still generates; only its editing is refused, with the reason.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.batcher import Batcher, Feeds
from service.files import sha256_file
from service.graph_signature import SignatureError, check_signature
from service.manifest import Manifest
from service.metrics import Metrics, ModelObserver
from service.quality_gates import gate_problem
from service.runtime import CPU, CUDA, RuntimeConfig, SessionInfo, intra_op_threads, open_session
from service.settings import Settings

log = logging.getLogger("service.encoders")


class EncoderError(RuntimeError):
    """An encoder that must not serve: missing file, wrong sha256, graph or warm-up, or a failed gate."""


@dataclass(frozen=True)
class ReadyEncoder:
    """`x` (and `c`) -> `z` (and class logits), behind its own batcher."""

    sha256: str
    provider: str
    session: SessionInfo = field(repr=False)
    batcher: Batcher = field(repr=False)


def run_encoder(session: SessionInfo, feeds: Feeds) -> np.ndarray:
    """One array per batch for the batcher: z, then the logits (conditional models) beside it."""
    outputs = [np.asarray(a, dtype=np.float32) for a in session.run(feeds)]
    return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=1)


def warm_up_feeds(manifest: Manifest, rows: int) -> Feeds:
    feeds = {"x": np.zeros((rows, *manifest.output_shape), np.float32)}
    if manifest.num_classes:
        feeds["c"] = np.zeros((rows, manifest.num_classes), np.float32)  # unknown class: E predicts it
    return feeds


def open_encoder(path: Path, manifest: Manifest, settings: Settings) -> SessionInfo:
    spec = manifest.encoder
    assert spec is not None  # callers load only versions whose manifest names an encoder
    file = path / spec.file
    if not file.is_file():
        raise EncoderError(f"{spec.file} is missing")
    digest = sha256_file(file)
    if digest != spec.sha256:
        raise EncoderError(f"sha256 of {spec.file} is {digest}, manifest says {spec.sha256}")
    threads = intra_op_threads(settings.intra_op_threads, settings.runners)
    try:
        session = open_session(
            file, settings.device, threads, settings.inter_op_threads, settings.ort_spinning,
            RuntimeConfig.of(settings, settings.max_batch_rows),
        )  # fmt: skip
    except Exception as error:  # onnxruntime raises its own exception types for corrupt graphs
        raise EncoderError(f"ONNX Runtime cannot load {spec.file}: {str(error).splitlines()[0]}") from None
    try:
        check_signature(*session.signature(), manifest.encoder_signature())
    except SignatureError as error:
        raise EncoderError(f"{spec.file}: {error}") from None
    if settings.device == "cuda" and session.provider != CUDA:
        raise EncoderError(f"GAN_DEVICE=cuda but {spec.file} runs on {session.provider}")
    return session


def check_encoder_quality(manifest: Manifest, mode: str) -> None:
    spec = manifest.encoder
    assert spec is not None
    problem = gate_problem(spec.gates, spec.metrics) if mode != "off" else None
    if problem and mode == "enforce":
        raise EncoderError(f"encoder quality gate: {problem}")
    if problem:
        key = f"{manifest.name}:{manifest.version}"
        log.warning("encoder of %s: %s (GAN_QUALITY_GATE=warn: editing anyway)", key, problem)


def prepare_encoder(path: Path, manifest: Manifest, settings: Settings) -> tuple[SessionInfo | None, str]:
    """The encoder's checked, warmed-up session, or None and the reason editing this version is refused.

    Blocking (file reads, session creation, a warm-up run): a hot load calls it off the event loop."""
    key = f"{manifest.name}:{manifest.version}"
    if manifest.encoder is None:
        return None, f"model {key} has no encoder: it can generate but not edit"
    try:
        session = open_encoder(path, manifest, settings)
        rows = settings.warmup_rows
        out = run_encoder(session, warm_up_feeds(manifest, rows))
        if out.shape != (rows, manifest.z_dim + manifest.num_classes) or not np.isfinite(out).all():
            raise EncoderError(
                f"encoder warm-up gave shape {out.shape} (finite: {bool(np.isfinite(out).all())})"
            )
        check_encoder_quality(manifest, settings.quality_gate)
    except (EncoderError, OSError, ValueError) as error:
        log.error("encoder of %s failed to load: %s (generation is not affected)", key, error)
        return None, f"the encoder of {key} failed to load: {error}"
    return session, ""


def cpu_split_rows(settings: Settings, provider: str) -> int:
    """A batcher's `split_rows`: GAN_SPLIT_ROWS where its session runs on the CPU, 0 (never split) elsewhere.

    The generator's batcher (service.versions) takes it from here too."""
    return settings.split_rows if provider == CPU else 0


def start_encoder(
    session: SessionInfo, manifest: Manifest, settings: Settings, metrics: Metrics
) -> ReadyEncoder:
    """The prepared encoder behind its own batcher (call inside the event loop)."""
    assert manifest.encoder is not None
    key = f"{manifest.name}:{manifest.version}"
    batcher = Batcher(
        functools.partial(run_encoder, session),
        max_batch_rows=settings.max_batch_rows,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue_rows=settings.max_queue_rows,
        observer=ModelObserver(metrics, f"{manifest.name}.encoder"),
        name=f"{key}.encoder",
        provider=session.provider,
        runners=settings.runners,
        inline_rows=settings.inline_rows,
        split_rows=cpu_split_rows(settings, session.provider),
    )
    batcher.start()
    return ReadyEncoder(manifest.encoder.sha256, session.provider, session, batcher)
