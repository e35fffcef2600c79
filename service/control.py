"""Model control (Triton's repository extension): index, load and unload, and an optional directory poll.

Load never unloads first. Each version of the model found on disk that is new or whose files changed is
prepared off the event loop (manifest, sha256, session, signature, warm-up, gates) beside the serving ones; only
then does the model's version table change, in one assignment, so the default (the highest ready version) moves
atomically. A version that fails to load changes nothing that serves: a serving version whose new files fail
keeps serving from the old ones. Versions taken out of service — replaced, gone from disk, or unloaded — stop
taking requests at once and close once no request holds them (service.repository.Repository.holding).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from service.model_folders import VersionDir, version_dirs
from service.repository import ModelNotFound, Repository
from service.versions import (
    FailedModel,
    ModelVersion,
    ReadyModel,
    fingerprint,
    prepare_version,
    start_version,
)

log = logging.getLogger("service.control")


class ControlError(RuntimeError):
    """A load or unload that could not be done, and why (the protocol's 400)."""


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str  # READY or UNAVAILABLE, as Triton's index reports them
    reason: str


class ModelControl:
    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.settings, self.metrics = repository.settings, repository.metrics
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._retiring: dict[asyncio.Task[None], ReadyModel] = {}
        self.failed_marks: dict[tuple[str, int], str] = {}  # files that failed: the poll waits for new ones
        self.unloaded: set[str] = set()  # unloaded by a call: the poll leaves them alone until loaded again

    def on_disk(self) -> dict[str, list[VersionDir]]:
        """The version folders on disk, by model; ControlError when the model directory cannot be read (gone,
        unreadable, an I/O error): that is a fault to report, not a repository without models to unload."""
        found: dict[str, list[VersionDir]] = {}
        try:
            versions = version_dirs(self.settings.model_dir)
        except OSError as error:
            raise ControlError(
                f"cannot read the model directory {self.settings.model_dir}: {error.strerror or error}"
            ) from None
        for version in versions:
            found.setdefault(version.name, []).append(version)
        return found

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model on disk or loaded, a row per version (a model unloaded or never loaded: one row)."""
        entries: list[IndexEntry] = []
        try:
            on_disk = self.on_disk()
        except ControlError:  # the loaded models are still listed, with their state
            on_disk = {}
        for name in sorted(set(on_disk) | set(self.repository.models)):
            versions = self.repository.models.get(name)
            if not versions:
                reason = "unloaded" if name in self.unloaded else "not loaded"
                entries.append(IndexEntry(name, "", "UNAVAILABLE", reason))
                continue
            for number, model in sorted(versions.items()):
                state = "READY" if isinstance(model, ReadyModel) else "UNAVAILABLE"
                entries.append(IndexEntry(name, str(number), state, model.reason or ""))
        return [e for e in entries if e.state == "READY"] if ready_only else entries

    def one_process(self) -> None:
        """A load or unload call acts on the process that answers it: with GAN_WORKERS > 1 it would leave the
        other workers serving something else, so it is refused (the directory poll acts in every worker)."""
        if self.settings.workers > 1:
            from service.errors import ApiError  # here: service.errors imports this module

            raise ApiError(
                409,
                f"model control calls act on one process and GAN_WORKERS is {self.settings.workers}: change the "
                "model directory with GAN_MODEL_POLL_S on (every worker polls it), or run GAN_WORKERS=1",
                "GAN_WORKERS",
            )

    async def load(self, name: str, polled: bool = False) -> list[ModelVersion]:
        """(Re)load `name` from disk beside what serves, then swap; ControlError naming each version that failed
        (the others are swapped in all the same, and a serving version whose new files failed keeps serving)."""
        if not polled:
            self.one_process()
        async with self._locks[name]:
            try:
                found = self.on_disk().get(name)
            except ControlError as error:  # nothing that serves changes
                self.metrics.model_loads.labels(name, "failed").inc()
                raise ControlError(f"failed to load '{name}': {error}") from None
            if not found:
                raise ControlError(
                    f"failed to load '{name}': no version folder <name>/<number>/ under {self.settings.model_dir}"
                )
            current = self.repository.models.get(name, {})
            table: dict[int, ModelVersion] = {}
            failures: list[str] = []
            for version in found:
                old = current.get(version.version)
                mark = await asyncio.to_thread(_fingerprint, version)
                if isinstance(old, ReadyModel) and old.fingerprint == mark:
                    table[version.version] = old  # unchanged: keeps serving, nothing reloaded
                    continue
                loaded = await self._load_version(version, mark)
                key = (name, version.version)
                self.failed_marks.pop(key, None)
                if isinstance(loaded, FailedModel):
                    self.failed_marks[key] = mark
                    failures.append(f"version {loaded.version}: {loaded.reason}")
                    if isinstance(old, ReadyModel):
                        table[version.version] = old  # the new files failed: the old ones keep serving
                        continue
                table[version.version] = loaded
            self.repository.models[name] = table  # the swap: one assignment inside the event loop
            self.unloaded.discard(name)
            kept = {id(m) for m in table.values()}
            for old in current.values():
                if id(old) not in kept:
                    self.retire(old)
            previous = {id(m) for m in current.values()}
            for model in table.values():
                if id(model) not in previous:
                    self.repository.record(model)
            self.repository.count_versions(name)
            if failures:
                ready = sorted(n for n, m in table.items() if isinstance(m, ReadyModel))
                serving = f"serving: versions {ready}" if ready else "no version of it serves"
                raise ControlError(f"failed to load '{name}': " + "; ".join(failures) + f" ({serving})")
            return list(table.values())

    async def _load_version(self, version: VersionDir, mark: str) -> ModelVersion:
        started = time.perf_counter()
        prepared = await asyncio.to_thread(prepare_version, version, self.settings)
        if isinstance(prepared, FailedModel):
            self.metrics.model_loads.labels(version.name, "failed").inc()
            return dataclasses.replace(prepared, fingerprint=mark)
        model = start_version(prepared, self.settings, self.metrics, mark)
        self.metrics.model_loads.labels(version.name, "ok").inc()
        self.metrics.model_load_seconds.labels(version.name).observe(time.perf_counter() - started)
        log.info("model %s loaded beside the serving versions in %.2fs", model.key, model.load_seconds)
        return model

    async def unload(self, name: str, polled: bool = False) -> None:
        """Take every version of `name` out of service; each closes once no request holds it."""
        if not polled:
            self.one_process()
        async with self._locks[name]:
            versions = self.repository.models.pop(name, None)
            if versions is None:
                raise ModelNotFound(f"model '{name}' is not loaded; loaded: {sorted(self.repository.models)}")
            self.unloaded.add(name)
            for model in versions.values():
                self.retire(model)
            self.repository.count_versions(name)

    def retire(self, model: ModelVersion) -> None:
        """Out of service now (the caller has removed it from the table); closed when no request holds it."""
        self.repository.forget(model)
        self.metrics.model_unloads.labels(model.name).inc()
        if isinstance(model, ReadyModel):
            task = asyncio.get_running_loop().create_task(self._close_when_free(model))
            self._retiring[task] = model
            task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def _close_when_free(self, model: ReadyModel) -> None:
        await model.leases.released()
        for batcher in model.batchers:
            await batcher.drain(self.settings.drain_timeout_s)
        log.info("model %s closed (out of service, no request holds it)", model.key)

    async def poll(self) -> None:
        """One look at the model directory: load what is new or changed, unload what is gone. A directory that
        cannot be read changes nothing: each loaded model counts a failed load, and the poll tries again."""
        try:
            on_disk = self.on_disk()
        except ControlError as error:
            log.error("model directory poll: %s (every loaded version keeps serving)", error)
            for name in self.repository.models:
                self.metrics.model_loads.labels(name, "failed").inc()
            return
        for name, found in sorted(on_disk.items()):
            if name in self.unloaded:
                continue
            current = self.repository.models.get(name, {})
            marks = {v.version: await asyncio.to_thread(_fingerprint, v) for v in found}
            # what was last tried per version: a version whose files failed is tried again once they change
            loaded = {n: self.failed_marks.get((name, n), m.fingerprint) for n, m in current.items()}
            if marks != loaded:
                with contextlib.suppress(ControlError):  # logged by the load; nothing serving changed
                    await self.load(name, polled=True)
        for name in sorted(set(self.repository.models) - set(on_disk)):
            log.info("model %s is gone from %s: unloading it", name, self.settings.model_dir)
            with contextlib.suppress(ModelNotFound):
                await self.unload(name, polled=True)
            # gone, not unloaded by a call: the poll loads it again if it comes back
            self.unloaded.discard(name)

    async def poll_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.poll()
            except Exception:  # a poll that fails (a folder half copied) is retried at the next interval
                log.exception("model directory poll failed")

    async def close(self) -> None:
        """At shutdown: the versions still retiring close now (what they hold fails as the drain's rest does)."""
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        for model in retiring.values():
            for batcher in model.batchers:
                await batcher.close()


def _fingerprint(version: VersionDir) -> str:
    try:
        return fingerprint(version)
    except OSError:  # a folder being written: it counts as changed, and its load says what is wrong
        return ""
