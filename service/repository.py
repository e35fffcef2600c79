"""The model repository: every `<name>/<version>` under the model directory, validated, warmed up, batched."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from service.batcher import Batcher, Feeds
from service.encoders import ReadyEncoder, load_encoder
from service.files import sha256_file
from service.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    Manifest,
    ManifestError,
    SignatureError,
    VersionDir,
    check_signature,
    gate_problem,
    load_manifest,
    version_dirs,
)
from service.metrics import Metrics, ModelObserver
from service.runtime import CUDA, SessionInfo, intra_op_threads, open_session
from service.settings import Settings

log = logging.getLogger("service.repository")


class ModelNotFound(LookupError):
    pass


class ModelUnavailable(RuntimeError):
    pass


class LoadError(RuntimeError):
    pass


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
    (x,) = session.session.run(["x"], feeds)
    return np.asarray(x)


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
        )
    except Exception as error:  # onnxruntime raises its own exception types for corrupt graphs
        raise LoadError(f"ONNX Runtime cannot load the graph: {str(error).splitlines()[0]}") from None
    return session


def check_device(session: SessionInfo, settings: Settings) -> None:
    if settings.device == "cuda" and session.provider != CUDA:
        raise LoadError(f"GAN_DEVICE=cuda but the session runs on {session.provider}")


def load_version(found: VersionDir, settings: Settings, metrics: Metrics) -> ModelVersion:
    """Validate, open, check and warm up one version; the batcher starts here (inside the event loop)."""
    started = time.perf_counter()
    manifest: Manifest | None = None
    session: SessionInfo | None = None
    key = f"{found.name}:{found.version}"
    try:
        manifest = read_manifest(found)
        session = open_graph(found.path / ONNX_FILE, settings)
        check_graph(session, manifest)
        check_device(session, settings)
        rows_per_s = warm_up(session, manifest, settings.warmup_rows)
        check_quality(manifest, settings.quality_gate, key)
    except (ManifestError, LoadError, OSError, ValueError) as error:
        log.error("model %s failed to load: %s", key, error)
        provider = session.provider if session else None
        seconds = time.perf_counter() - started
        return FailedModel(found.name, found.version, found.path, str(error), manifest, provider, seconds)
    batcher = Batcher(
        functools.partial(infer, session),
        max_batch_rows=settings.max_batch_rows,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue_rows=settings.max_queue_rows,
        initial_rows_per_s=rows_per_s,
        observer=ModelObserver(metrics, found.name),
        name=key,
        runners=settings.runners,
        inline_rows=settings.inline_rows,
    )
    batcher.start()
    encoder, editing_reason = load_encoder(found.path, manifest, settings, metrics)
    seconds = time.perf_counter() - started
    return ReadyModel(
        found.name, found.version, found.path, manifest, session.provider, seconds, session, batcher,
        encoder, editing_reason,
    )  # fmt: skip


class Repository:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.models: dict[str, dict[int, ModelVersion]] = {}

    def load(self) -> None:
        """Load every version; call inside the running event loop (batchers start their worker tasks)."""
        root = self.settings.model_dir
        if not root.is_dir():
            log.error("model directory %s does not exist", root)
            return
        for found in version_dirs(root):
            model = load_version(found, self.settings, self.metrics)
            self.models.setdefault(model.name, {})[model.version] = model
            sha = model.manifest.onnx_sha256 if model.manifest else ""
            for metric, value in (model.manifest.metrics if model.manifest else {}).items():
                self.metrics.quality.labels(model.name, str(model.version), metric).set(value)
            self.metrics.model_info.labels(
                model.name, str(model.version), model.provider or "none", sha, model.status
            ).set(1 if model.status == "ready" else 0)
            log.info(
                "model %s: %s (%s) in %.2fs", model.key, model.status, model.provider, model.load_seconds
            )

    def get(self, name: str, version: int | None = None) -> ReadyModel:
        """The requested version, or the highest ready one; 404 for unknown, 503 for failed."""
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' not found; available: {sorted(self.models)}")
        if version is None:
            ready = [v for v in versions.values() if isinstance(v, ReadyModel)]
            if not ready:
                raise ModelUnavailable(f"model '{name}' has no version that loaded: {self._reasons(name)}")
            return max(ready, key=lambda v: v.version)
        if version not in versions:
            raise ModelNotFound(f"model '{name}' has no version {version}; versions: {sorted(versions)}")
        model = versions[version]
        if isinstance(model, FailedModel):
            raise ModelUnavailable(f"model {model.key} failed to load: {model.reason}")
        return model

    def _reasons(self, name: str) -> str:
        return "; ".join(f"v{v.version}: {v.reason}" for v in self.models[name].values())

    def all(self) -> list[ModelVersion]:
        return [v for versions in self.models.values() for v in versions.values()]

    def ready(self) -> bool:
        loaded = self.all()
        if not any(m.status == "ready" for m in loaded):
            return False
        # GAN_DEVICE=cuda promises the GPU: any model that is not on CUDA makes the service unready.
        return self.settings.device != "cuda" or all(m.provider == CUDA for m in loaded)

    async def drain(self, timeout_s: float) -> bool:
        """Stop every batcher's intake at once and wait for queued work up to timeout_s."""
        batchers = [b for m in self.all() if isinstance(m, ReadyModel) for b in m.batchers]
        results = await asyncio.gather(*(b.drain(timeout_s) for b in batchers))
        return all(results)

    async def close(self) -> None:
        for model in self.all():
            if isinstance(model, ReadyModel):
                for batcher in model.batchers:
                    await batcher.close()
