"""A model version: what a loaded one is (ReadyModel, FailedModel) and how one is loaded and checked.

Loading is two steps so a hot load (service.control) can run the blocking one off the event loop:
`prepare_version` (manifest, sha256, session, graph signature, device, warm-up, quality gate, encoder) and
`start_version` (the batchers, inside the event loop).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from service.batcher import BACKGROUND_BATCH_ROWS, Batcher, Feeds
from service.encoders import ReadyEncoder, cpu_split_rows, prepare_encoder, start_encoder
from service.files import sha256_file
from service.graph_signature import SignatureError, check_signature
from service.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    Manifest,
    ManifestError,
    load_manifest,
)
from service.metrics import Metrics, ModelObserver
from service.model_folders import VersionDir
from service.quality_gates import gate_problem
from service.runtime import (
    CUDA,
    RuntimeConfig,
    SessionInfo,
    intra_op_threads,
    open_session,
)
from service.settings import Settings

log = logging.getLogger("service.versions")


class LoadError(RuntimeError):
    pass


class Leases:
    """How many requests hold a version; a version taken out of service closes once none does."""

    def __init__(self) -> None:
        self.count = 0
        self._none = asyncio.Event()
        self._none.set()

    def take(self) -> None:
        self.count += 1
        self._none.clear()

    def give_back(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._none.set()

    async def released(self) -> None:
        await self._none.wait()


@dataclass(frozen=True)
class FailedModel:
    """A version that does not serve, and why; what was read before the failure is kept for /models."""

    name: str
    version: int
    path: Path
    reason: str
    manifest: Manifest | None = None
    provider: str | None = None
    load_seconds: float = 0.0
    fingerprint: str = ""
    status: Literal["failed"] = "failed"

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class ReadyModel:
    """A version that loaded, passed every check and warmed up: its session runs behind its batcher."""

    name: str
    version: int
    path: Path
    manifest: Manifest
    provider: str
    load_seconds: float
    session: SessionInfo = field(repr=False)
    batcher: Batcher = field(repr=False)
    encoder: ReadyEncoder | None = field(default=None, repr=False)
    editing_reason: str = ""  # why this version cannot edit, when it has no ready encoder
    fingerprint: str = ""  # the files it was loaded from (service.control.fingerprint)
    leases: Leases = field(default_factory=Leases, repr=False, compare=False)
    status: Literal["ready"] = "ready"
    reason: None = None

    @property
    def batchers(self) -> list[Batcher]:
        return [self.batcher] + ([self.encoder.batcher] if self.encoder else [])

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"


ModelVersion = ReadyModel | FailedModel


def infer(session: SessionInfo, feeds: Feeds) -> np.ndarray:
    (x,) = session.run(feeds, ["x"])
    return x


def infer_alone(session: SessionInfo, feeds: Feeds) -> np.ndarray:
    (x,) = session.run_alone(feeds, ["x"])
    return x


def check_graph(session: SessionInfo, manifest: Manifest) -> None:
    """The manifest must describe the graph: input/output names, dims and dtype."""
    try:
        check_signature(*session.signature(), manifest.signature())
    except SignatureError as error:
        raise LoadError(str(error)) from None


def warm_up(session: SessionInfo, manifest: Manifest, rows: int) -> float:
    """Run one batch of zeros; returns rows per second (the batcher's first drain-rate estimate)."""
    feeds = {"z": np.zeros((rows, manifest.z_dim), np.float32)}
    if manifest.num_classes:
        feeds["c"] = np.full((rows, manifest.num_classes), 1.0 / manifest.num_classes, np.float32)
    started = time.perf_counter()
    x = infer(session, feeds)
    seconds = time.perf_counter() - started
    if session.wide is not None:  # its first run allocates too: at load, not on a first lone request
        infer_alone(session, feeds)
    if x.shape != (rows, *manifest.output_shape) or not np.isfinite(x).all():
        raise LoadError(f"warm-up gave shape {x.shape} (finite: {bool(np.isfinite(x).all())})")
    return rows / max(seconds, 1e-6)


def check_quality(manifest: Manifest, mode: str, key: str) -> None:
    """Under `enforce`, a model without metrics or failing a gate must not serve; under `warn`, say so."""
    problem = gate_problem(manifest.gates, manifest.metrics) if mode != "off" else None
    if problem and mode == "enforce":
        raise LoadError(f"quality gate: {problem}")
    if problem:
        log.warning("model %s quality: %s (GAN_QUALITY_GATE=warn: serving anyway)", key, problem)


def read_manifest(found: VersionDir) -> Manifest:
    """The version's manifest, checked against the folder it lives in and the graph file's sha256."""
    manifest = load_manifest(found.path / MANIFEST_FILE)
    if (manifest.name, manifest.version) != (found.name, found.version):
        raise LoadError(
            f"manifest says {manifest.name}:{manifest.version} but lives in {found.name}:{found.version}"
        )
    if not (found.path / ONNX_FILE).is_file():
        raise LoadError(f"{ONNX_FILE} is missing")
    digest = sha256_file(found.path / ONNX_FILE)
    if digest != manifest.onnx_sha256:
        raise LoadError(f"sha256 of {ONNX_FILE} is {digest}, manifest says {manifest.onnx_sha256}")
    return manifest


def open_graph(path: Path, settings: Settings) -> SessionInfo:
    """An ONNX Runtime session on the providers the settings ask for (which one it got is checked after)."""
    try:
        session = open_session(
            path,
            settings.device,
            intra_op_threads(settings.intra_op_threads, settings.runners),
            settings.inter_op_threads,
            settings.ort_spinning,
            RuntimeConfig.of(settings, max(settings.max_batch_rows, BACKGROUND_BATCH_ROWS)),
            # the wide session: all of this worker's CPUs in one run
            wide_threads=intra_op_threads(0, 1, settings.workers) if settings.wide_session else 0,
        )
    except Exception as error:  # onnxruntime raises its own exception types for corrupt graphs
        raise LoadError(f"ONNX Runtime cannot load the graph: {str(error).splitlines()[0]}") from None
    return session


def check_device(session: SessionInfo, settings: Settings) -> None:
    if settings.device == "cuda" and session.provider != CUDA:
        raise LoadError(f"GAN_DEVICE=cuda but the session runs on {session.provider}")


@dataclass(frozen=True)
class Prepared:
    """A version checked and warmed up, not yet behind a batcher."""

    found: VersionDir
    manifest: Manifest
    session: SessionInfo
    rows_per_s: float
    encoder: SessionInfo | None
    editing_reason: str
    seconds: float


def file_state(path: Path) -> tuple[int, int, int] | None:
    """What a rewrite of a file changes: its inode, size and mtime (None when it cannot be read)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def prepare_version(found: VersionDir, settings: Settings) -> Prepared | FailedModel:
    """Validate, open, check and warm up one version and its encoder. Blocking: a hot load runs it in a thread."""
    started = time.perf_counter()
    manifest: Manifest | None = None
    session: SessionInfo | None = None
    key = f"{found.name}:{found.version}"
    try:
        before = file_state(found.path / ONNX_FILE)
        manifest = read_manifest(found)  # the graph's sha256 ...
        session = open_graph(found.path / ONNX_FILE, settings)  # ... then ONNX Runtime reads the file again
        if file_state(found.path / ONNX_FILE) != before:  # a writer in between: what it read was not checked
            raise LoadError(
                f"{ONNX_FILE} changed while it was being loaded (still being written?); tried again once it changes"
            )
        check_graph(session, manifest)
        check_device(session, settings)
        rows_per_s = warm_up(session, manifest, settings.warmup_rows)
        check_quality(manifest, settings.quality_gate, key)
    except (ManifestError, LoadError, OSError, ValueError) as error:
        log.error("model %s failed to load: %s", key, error)
        provider = session.provider if session else None
        seconds = time.perf_counter() - started
        return FailedModel(found.name, found.version, found.path, str(error), manifest, provider, seconds)
    encoder, editing_reason = prepare_encoder(found.path, manifest, settings)
    seconds = time.perf_counter() - started
    return Prepared(found, manifest, session, rows_per_s, encoder, editing_reason, seconds)


def start_version(
    prepared: Prepared, settings: Settings, metrics: Metrics, fingerprint: str = ""
) -> ReadyModel:
    """The prepared version behind its batchers (call inside the event loop)."""
    found, manifest, session = prepared.found, prepared.manifest, prepared.session
    batcher = Batcher(
        functools.partial(infer, session),
        max_batch_rows=settings.max_batch_rows,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue_rows=settings.max_queue_rows,
        initial_rows_per_s=prepared.rows_per_s,
        observer=ModelObserver(metrics, found.name),
        name=f"{found.name}:{found.version}",
        provider=session.provider,
        runners=max(settings.runners, session.devices),  # at least one batch in flight per GPU
        inline_rows=settings.inline_rows,
        split_rows=cpu_split_rows(settings, session.provider),
        infer_alone=functools.partial(infer_alone, session) if session.wide is not None else None,
        background_nice=settings.dataset_nice,
    )
    batcher.start()
    metrics.queue_capacity.labels(found.name).set(batcher.max_queue_rows)  # once, at load: a constant
    encoder = None
    if prepared.encoder is not None:
        encoder = start_encoder(prepared.encoder, manifest, settings, metrics)
    return ReadyModel(
        found.name, found.version, found.path, manifest, session.provider, prepared.seconds, session, batcher,
        encoder, prepared.editing_reason, fingerprint,
    )  # fmt: skip


def load_version(found: VersionDir, settings: Settings, metrics: Metrics) -> ModelVersion:
    """prepare_version, then start_version: one version loaded in place (at start-up)."""
    prepared = prepare_version(found, settings)
    return prepared if isinstance(prepared, FailedModel) else start_version(prepared, settings, metrics)


def fingerprint(found: VersionDir) -> str:
    """What a version was loaded from: its manifest's bytes and the size and mtime of every graph (.onnx) in it.

    Only the files a version reads count: a figure written beside it (contours.png) does not reload it."""
    digest = hashlib.sha256((found.path / MANIFEST_FILE).read_bytes())
    for file in sorted(p for p in found.path.glob("*.onnx") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()
