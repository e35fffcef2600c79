"""The model repository: every `<name>/<version>` under the model directory, validated, warmed up, batched."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from service.batcher import Batcher, Feeds
from service.manifest import MANIFEST_FILE, ONNX_FILE, Manifest, ManifestError, load_manifest, sha256_file
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


@dataclass
class ModelVersion:
    name: str
    version: int
    path: Path
    status: Literal["ready", "failed"] = "failed"
    reason: str | None = None
    manifest: Manifest | None = None
    provider: str | None = None
    load_seconds: float = 0.0
    runtime: SessionInfo | None = field(default=None, repr=False)
    batcher: Batcher | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    def infer(self, feeds: Feeds) -> np.ndarray:
        assert self.runtime is not None
        (x,) = self.runtime.session.run(["x"], feeds)
        return np.asarray(x)


def check_graph(session: SessionInfo, manifest: Manifest) -> None:
    """The manifest must describe the graph: input/output names, dims and dtype."""
    inputs, outputs = session.session.get_inputs(), session.session.get_outputs()
    if [i.name for i in inputs] != manifest.input_names:
        raise LoadError(
            f"graph inputs {[i.name for i in inputs]} != manifest input_names {manifest.input_names}"
        )
    if [o.name for o in outputs] != manifest.output_names:
        raise LoadError(
            f"graph outputs {[o.name for o in outputs]} != manifest output_names {manifest.output_names}"
        )
    widths = {"z": manifest.z_dim, "c": manifest.num_classes}
    expected = [(i, [widths[i.name]]) for i in inputs] + [(outputs[0], manifest.output_shape)]
    for value, tail in expected:
        if value.type != "tensor(float)":
            raise LoadError(f"{value.name}: dtype {value.type}, expected tensor(float)")
        if len(value.shape) != 1 + len(tail) or isinstance(value.shape[0], int):
            raise LoadError(
                f"{value.name}: shape {value.shape}: needs a dynamic batch axis and {len(tail)} more dims"
            )
        if list(value.shape[1:]) != tail:
            raise LoadError(f"{value.name}: dims {value.shape[1:]} disagree with the manifest's {tail}")


def warm_up(model: ModelVersion, rows: int) -> float:
    """Run one batch of zeros; returns rows per second (the batcher's first drain-rate estimate)."""
    manifest = model.manifest
    assert manifest is not None
    feeds = {"z": np.zeros((rows, manifest.z_dim), np.float32)}
    if manifest.num_classes:
        feeds["c"] = np.full((rows, manifest.num_classes), 1.0 / manifest.num_classes, np.float32)
    started = time.perf_counter()
    x = model.infer(feeds)
    seconds = time.perf_counter() - started
    if x.shape != (rows, *manifest.output_shape) or not np.isfinite(x).all():
        raise LoadError(f"warm-up gave shape {x.shape} (finite: {bool(np.isfinite(x).all())})")
    return rows / max(seconds, 1e-6)


def check_quality(manifest: Manifest, mode: str, key: str) -> None:
    """Under `enforce`, a model without metrics or failing a gate must not serve; under `warn`, say so."""
    if mode == "off":
        return
    failed = [g for g in manifest.gate_results() if not g.passed]
    problem = None
    if not manifest.metrics or not manifest.gates:
        problem = "no quality metrics or gates in the manifest (run `python -m training evaluate`)"
    elif failed:
        problem = "; ".join(f"{g.metric} = {g.value} fails {g.op} {g.threshold:g}" for g in failed)
    if problem and mode == "enforce":
        raise LoadError(f"quality gate: {problem}")
    if problem:
        log.warning("model %s quality: %s (GAN_QUALITY_GATE=warn: serving anyway)", key, problem)


def load_version(path: Path, settings: Settings) -> tuple[ModelVersion, float]:
    model = ModelVersion(path.parent.name, int(path.name), path)
    started = time.perf_counter()
    rows_per_s = 0.0
    try:
        manifest = load_manifest(path / MANIFEST_FILE)
        if (manifest.name, manifest.version) != (model.name, model.version):
            raise LoadError(f"manifest says {manifest.name}:{manifest.version} but lives in {model.key}")
        if not (path / ONNX_FILE).is_file():
            raise LoadError(f"{ONNX_FILE} is missing")
        digest = sha256_file(path / ONNX_FILE)
        if digest != manifest.onnx_sha256:
            raise LoadError(f"sha256 of {ONNX_FILE} is {digest}, manifest says {manifest.onnx_sha256}")
        model.manifest = manifest
        try:
            model.runtime = open_session(
                path / ONNX_FILE,
                settings.device,
                intra_op_threads(settings.intra_op_threads, settings.runners),
                settings.inter_op_threads,
                settings.ort_spinning,
            )
        except Exception as error:  # onnxruntime raises its own exception types for corrupt graphs
            raise LoadError(f"ONNX Runtime cannot load the graph: {str(error).splitlines()[0]}") from None
        model.provider = model.runtime.provider
        check_graph(model.runtime, manifest)
        if settings.device == "cuda" and model.provider != CUDA:
            raise LoadError(f"GAN_DEVICE=cuda but the session runs on {model.provider}")
        rows_per_s = warm_up(model, settings.warmup_rows)
        check_quality(manifest, settings.quality_gate, model.key)
        model.status, model.reason = "ready", None
    except (ManifestError, LoadError, OSError, ValueError) as error:
        model.status, model.reason = "failed", str(error)
        model.runtime = None
        log.error("model %s failed to load: %s", model.key, error)
    model.load_seconds = time.perf_counter() - started
    return model, rows_per_s


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
        for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version_dir in sorted(
                p for p in name_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0
            ):
                model, rows_per_s = load_version(version_dir, self.settings)
                self.models.setdefault(model.name, {})[model.version] = model
                if model.status == "ready":
                    model.batcher = Batcher(
                        model.infer,
                        max_batch_rows=self.settings.max_batch_rows,
                        max_wait_s=self.settings.max_wait_ms / 1000,
                        max_queue_rows=self.settings.max_queue_rows,
                        initial_rows_per_s=rows_per_s,
                        observer=ModelObserver(self.metrics, model.name),
                        name=model.key,
                        runners=self.settings.runners,
                        inline_rows=self.settings.inline_rows,
                    )
                    model.batcher.start()
                sha = model.manifest.onnx_sha256 if model.manifest else ""
                for metric, value in (model.manifest.metrics if model.manifest else {}).items():
                    self.metrics.quality.labels(model.name, str(model.version), metric).set(value)
                self.metrics.model_info.labels(
                    model.name, str(model.version), model.provider or "none", sha, model.status
                ).set(1 if model.status == "ready" else 0)
                log.info(
                    "model %s: %s (%s) in %.2fs", model.key, model.status, model.provider, model.load_seconds
                )

    def get(self, name: str, version: int | None = None) -> ModelVersion:
        """The requested version, or the highest ready one; 404 for unknown, 503 for failed."""
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' not found; available: {sorted(self.models)}")
        if version is None:
            ready = [v for v in versions.values() if v.status == "ready"]
            if not ready:
                raise ModelUnavailable(f"model '{name}' has no version that loaded: {self._reasons(name)}")
            return max(ready, key=lambda v: v.version)
        if version not in versions:
            raise ModelNotFound(f"model '{name}' has no version {version}; versions: {sorted(versions)}")
        model = versions[version]
        if model.status != "ready":
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
        batchers = [m.batcher for m in self.all() if m.batcher is not None]
        results = await asyncio.gather(*(b.drain(timeout_s) for b in batchers))
        return all(results)

    async def close(self) -> None:
        for model in self.all():
            if model.batcher is not None:
                await model.batcher.close()
