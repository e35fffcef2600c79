"""The model repository: every `<name>/<version>` under the model directory, validated, warmed up, batched.

A request holds the versions it is given (`holding`, around every HTTP request and gRPC call) until it is
answered, so a version that a hot swap (service.control) takes out of service closes only once nobody holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from service.metrics import Metrics
from service.model_folders import version_dirs
from service.runtime import CUDA
from service.settings import Settings
from service.versions import FailedModel, Leases, ModelVersion, ReadyModel, fingerprint, load_version

log = logging.getLogger("service.repository")


class ModelNotFound(LookupError):
    pass


class ModelUnavailable(RuntimeError):
    pass


# The versions the current request (an HTTP request or a gRPC call) was given; released when it is answered.
_held: ContextVar[list[Leases] | None] = ContextVar("held_versions", default=None)


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
            try:
                mark = fingerprint(found)
            except OSError:
                mark = ""
            model = load_version(found, self.settings, self.metrics)
            model = dataclasses.replace(model, fingerprint=mark)
            self.models.setdefault(model.name, {})[model.version] = model
            self.metrics.model_loads.labels(model.name, "ok" if model.status == "ready" else "failed").inc()
            if isinstance(model, ReadyModel):
                self.metrics.model_load_seconds.labels(model.name).observe(model.load_seconds)
            self.record(model)
        for name in self.models:
            self.count_versions(name)

    def count_versions(self, name: str) -> None:
        ready = sum(isinstance(m, ReadyModel) for m in self.models.get(name, {}).values())
        self.metrics.versions_loaded.labels(name).set(ready)

    def record(self, model: ModelVersion) -> None:
        """A version's gauges: its manifest's quality metrics and its info (ready or failed)."""
        sha = model.manifest.onnx_sha256 if model.manifest else ""
        for metric, value in (model.manifest.metrics if model.manifest else {}).items():
            self.metrics.quality.labels(model.name, str(model.version), metric).set(value)
        self.metrics.model_info.labels(
            model.name, str(model.version), model.provider or "none", sha, model.status
        ).set(1 if model.status == "ready" else 0)
        log.info("model %s: %s (%s) in %.2fs", model.key, model.status, model.provider, model.load_seconds)

    def forget(self, model: ModelVersion) -> None:
        """Remove a version's gauges (it no longer serves)."""
        sha = model.manifest.onnx_sha256 if model.manifest else ""
        for metric in model.manifest.metrics if model.manifest else {}:
            with contextlib.suppress(KeyError):
                self.metrics.quality.remove(model.name, str(model.version), metric)
        with contextlib.suppress(KeyError):
            self.metrics.model_info.remove(
                model.name, str(model.version), model.provider or "none", sha, model.status
            )

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Inside: every version `get` hands out is held (not closed by a swap) until the block ends."""
        held: list[Leases] = []
        token = _held.set(held)
        try:
            yield
        finally:
            _held.reset(token)
            for leases in held:
                leases.give_back()

    def get(self, name: str, version: int | None = None, editable: bool = False) -> ReadyModel:
        """The requested version, or the highest ready one; 404 for unknown, 503 for failed. `editable`
        (requests that encode images): without a version, the highest ready one that has an encoder, when
        one has (a newer generator may ship before its encoder is trained); else the highest ready one,
        whose missing encoder the request then reports."""
        model = self._find(name, version, editable)
        held = _held.get()
        if held is not None:
            model.leases.take()
            held.append(model.leases)
        return model

    def _find(self, name: str, version: int | None, editable: bool = False) -> ReadyModel:
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' not found; available: {sorted(self.models)}")
        if version is None:
            ready = [v for v in versions.values() if isinstance(v, ReadyModel)]
            if not ready:
                raise ModelUnavailable(f"model '{name}' has no version that loaded: {self._reasons(name)}")
            with_encoder = [v for v in ready if v.encoder is not None] if editable else []
            return max(with_encoder or ready, key=lambda v: v.version)
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
