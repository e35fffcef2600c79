"""Dataset jobs at run time: one asyncio task per running job, started in the app's lifespan (which resumes the
unfinished ones), its rows through the model's batcher in the background lane, its shards written in order.

A job holds the model version it was created on for its whole life (Repository.holding), so a hot swap never
closes it underneath; its version and ONNX sha256 are recorded, and a resumed job refuses any other graph.
A job's CPU work (latents, encoding) runs in worker processes at the lowest priority: mostly Python, it would
hold the GIL against the event loop in a thread. A worker also writes the shard it encodes, as a temporary file
that the job renames into place (in order, the budget checked first): a shard's bytes never cross the pipe, which
cost the event loop about 4 ms per 1.5 MB shard.

GAN_WORKERS > 1 (service.workers): a job's task, its progress and the limits' check live in one process, so
worker 0 alone resumes unfinished jobs and expires old ones, every worker reads jobs and shards from SQLite, and
creating a job, or deleting a running one, is refused with a 409 naming GAN_WORKERS (no worker can cancel
another's task); a finished job is deleted by any worker. The limits are service.datasets.limits; removing jobs
(DELETE, the retention) is service.datasets.retention.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import secrets
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

from service.batcher import BatchFailed, Draining
from service.datasets import limits, retention
from service.datasets.limits import JobFailed, to_the_end
from service.datasets.shards import Identity, encode_to_temporary, publish, remove_partial, served, shard_name
from service.datasets.spec import DatasetRequest, JobSpec, RowPlan, resolved
from service.datasets.store import DB_FILE, Job, Shard, Store
from service.datasets.workers import WorkerFailed, Workers
from service.errors import ApiError
from service.repository import ModelNotFound, ModelUnavailable
from service.state import AppState
from service.versions import ReadyModel
from service.workers import runs_dataset_jobs

log = logging.getLogger("service.datasets")
DEPTH = 3  # shards in the making at once: latents, generator and encoding of the next ones overlap the writes


class DatasetJobs:
    def __init__(self, state: AppState) -> None:
        self.state, self.settings = state, state.settings
        self.store: Store | None = None
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.runs: dict[str, tuple[float, int]] = {}  # job -> (when this run started, rows done then)
        self.sweeper: asyncio.Task[None] | None = None
        self.pool: Workers | None = None

    @property
    def root(self) -> Path:
        return self.settings.data_dir.resolve()

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def folder(self, job_id: str) -> Path:
        return self.datasets / job_id

    def open_store(self) -> Store:
        """The database, created on first use (a service that never runs a job writes nothing)."""
        if self.store is None:
            try:
                self.store = Store(self.root)
            except OSError as error:
                raise ApiError(503, f"GAN_DATA_DIR ({self.root}) cannot be written: {error}", None) from None
        return self.store

    async def start(self) -> None:
        """Finish interrupted removals, expire finished jobs, and resume every unfinished one (from its first
        incomplete shard)."""
        if not runs_dataset_jobs():  # another worker than 0: reads only
            if (self.root / DB_FILE).exists():
                self.open_store()
            return
        if (self.root / DB_FILE).exists():
            store = self.open_store()
            await retention.recover(store, self.datasets)
            await self.sweep()
            for job in store.jobs("running"):
                listed = len(store.shards(job.id))
                log.info("dataset job %s: resuming (%d of %d shards listed)", job.id, listed, job.shards)
                self.spawn(job.id)
        interval = retention.sweep_interval(self.settings.dataset_retention_s)
        self.sweeper = asyncio.get_running_loop().create_task(retention.sweep_forever(interval, self.sweep))

    async def close(self) -> None:
        tasks = [t for t in [self.sweeper, *self.tasks.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.store is not None:
            self.store.close()
            self.store = None

    # --- create, read, delete ------------------------------------------------------------------------------

    def create(self, body: DatasetRequest) -> Job:
        """Check every limit, record the job and start it. No await inside: the limits cannot race."""
        settings = self.settings
        limits.check_one_process(settings, "created")
        model = self.state.repository.get(body.model, body.version)  # held for the request, 404 / 503
        manifest, field = model.manifest, body.plan_field()
        plan = RowPlan.of(resolved(body, model.version, settings.png_provenance), manifest)
        estimate = limits.check_size(plan, field, settings)
        store = self.open_store()
        etas = [self.progress(job)[1] for job in store.jobs("running")]
        limits.check_running(len(etas), settings, limits.retry_after(etas))
        limits.check_disk(estimate, store, self.root, field, settings)
        job = Job(
            secrets.token_hex(8), plan.spec.model_dump(mode="json"), "running", model.name, model.version,
            manifest.onnx_sha256, plan.total_rows, plan.shards, estimate, time.time(), None, 0.0, None, plan.info(),
        )  # fmt: skip
        store.insert(job)
        self.spawn(job.id)
        return job

    def job(self, job_id: str) -> Job:
        job = self.store.job(job_id) if self.store is not None else None
        if job is None:
            raise ApiError(404, f"no dataset job '{job_id}'", "id")
        return job

    def jobs(self) -> list[Job]:
        return self.store.jobs() if self.store is not None else []

    def shards(self, job_id: str) -> list[Shard]:
        return self.store.shards(job_id) if self.store is not None else []

    def progress(self, job: Job) -> tuple[float | None, float | None]:
        """(rows per second, seconds left) of a job: this run's rate while it runs, its whole rate once done."""
        done = sum(s.rows for s in self.shards(job.id))
        if job.state != "running":
            return (job.total_rows / job.active_s if job.active_s > 0 and job.state == "done" else None), None
        started, rows_then = self.runs.get(job.id, (time.monotonic(), done))
        elapsed = time.monotonic() - started
        if done <= rows_then or elapsed <= 0:
            return None, None
        rate = (done - rows_then) / elapsed
        return rate, (job.total_rows - done) / rate

    async def delete(self, job_id: str) -> None:
        """Cancel the job if it runs, then remove it: its files, then its row (service.datasets.retention)."""
        if self.job(job_id).state == "running":
            limits.check_one_process(self.settings, "running and deleted")
        task = self.tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert self.store is not None
        await retention.remove(self.store, self.datasets, job_id)

    async def sweep(self) -> None:
        if self.store is not None:
            await retention.expire(self.store, self.datasets, self.settings.dataset_retention_s)

    # --- running -------------------------------------------------------------------------------------------

    def spawn(self, job_id: str) -> None:
        # A fresh context: the task must not share the creating request's held versions (it holds its own).
        task = asyncio.get_running_loop().create_task(self.run(job_id), context=contextvars.Context())
        self.tasks[job_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(job_id, None))

    async def run(self, job_id: str) -> None:
        assert self.store is not None
        job = self.store.job(job_id)
        assert job is not None
        with self.state.repository.holding():
            try:
                model = self.state.repository.get(job.model, job.version)
                if model.manifest.onnx_sha256 != job.onnx_sha256:
                    raise JobFailed(
                        f"{model.key} now has ONNX sha256 {model.manifest.onnx_sha256}, the job was started on "
                        f"{job.onnx_sha256}: its shards would differ; create a new job"
                    )
                await self.write(job, JobSpec.model_validate(job.spec), model)
            except (ModelNotFound, ModelUnavailable) as error:
                self.fail(job, f"model {job.model} version {job.version} does not serve: {error}")
            except (JobFailed, BatchFailed, WorkerFailed) as error:
                self.fail(job, str(error))
            except Draining:
                log.info("dataset job %s: stopped by the drain; it resumes at the next start", job.id)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a bug: fail the job visibly rather than leave it hanging
                log.exception("dataset job %s failed", job.id)
                self.fail(job, f"internal error: {error!r}")
            finally:
                self.runs.pop(job.id, None)

    def fail(self, job: Job, reason: str) -> None:
        log.warning("dataset job %s failed: %s", job.id, reason)
        assert self.store is not None
        self.store.finish(job.id, "failed", reason)
        self.state.metrics.dataset_jobs.labels("failed").inc()

    async def write(self, job: Job, spec: JobSpec, model: ReadyModel) -> None:
        """Every shard not yet listed, written in order; up to DEPTH shards are in the making meanwhile."""
        assert self.store is not None
        plan, identity = RowPlan.of(spec, model.manifest), Identity.of(spec, model.manifest)
        folder = self.folder(job.id)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(remove_partial, folder)
        for shard in self.store.shards(job.id):  # a listed shard whose file is not whole is written again
            path = folder / shard_name(shard.k, spec.format)
            if not path.is_file() or path.stat().st_size != shard.bytes:
                self.store.drop_shard(job.id, shard.k)
        listed = {s.k for s in self.store.shards(job.id)}
        todo = iter([k for k in range(plan.shards) if k not in listed])
        self.runs[job.id] = (time.monotonic(), sum(s.rows for s in self.store.shards(job.id)))
        making: deque[tuple[int, asyncio.Task[tuple[str, int, str]]]] = deque()

        def start_next() -> None:
            k = next(todo, None)
            if k is not None:
                making.append((k, asyncio.ensure_future(self.make_shard(plan, identity, k, folder, model))))

        mark = time.monotonic()
        try:
            for _ in range(DEPTH):
                start_next()
            while making:
                k, task = making.popleft()
                made = await task
                start_next()
                mark = await self.commit_shard(job, plan, k, made, mark, model)
            self.store.finish(job.id, "done", active_s=time.monotonic() - mark)
            self.state.metrics.dataset_jobs.labels("done").inc()
            log.info("dataset job %s: done, %d rows in %d shards", job.id, job.total_rows, job.shards)
        finally:
            for _, task in making:
                task.cancel()
            await asyncio.gather(*(task for _, task in making), return_exceptions=True)
            await asyncio.to_thread(remove_partial, folder)  # the shards made but never listed

    async def make_shard(
        self, plan: RowPlan, identity: Identity, k: int, folder: Path, model: ReadyModel
    ) -> tuple[str, int, str]:
        """Shard k as a temporary file in `folder`, its bytes and sha256: latents (a worker process), the generator
        (the background lane), encoding and writing (a worker process)."""
        workers = self.workers()
        rows = await workers.call(plan.shard_plan, k)
        future = model.batcher.enqueue(rows.feeds, rows.rows, math.inf, background=True)
        try:
            x = await future
        finally:
            future.cancel()  # a no-op once computed; drops the rows of a cancelled job
        # uint8 images are a quarter of the float32 output to send; numpy converts without holding the GIL
        values = await asyncio.to_thread(served, x, identity.kind)
        indexed = replace(rows, feeds={})  # the encoding needs indices and classes, not latents
        path = folder / shard_name(k, plan.spec.format)
        return await to_the_end(
            k, workers.call(encode_to_temporary, plan.spec.format, identity, indexed, values, path)
        )

    async def commit_shard(
        self, job: Job, plan: RowPlan, k: int, made: tuple[str, int, str], mark: float, model: ReadyModel
    ) -> float:
        """Check the budget, rename shard k's file (`make_shard`) into place, list it; returns when it was listed."""
        assert self.store is not None
        temporary, size, digest = made
        if (problem := limits.shard_over_budget(k, size, self.store, self.settings)) is not None:
            raise JobFailed(problem)  # write() removes its file
        path = self.folder(job.id) / shard_name(k, plan.spec.format)
        await to_the_end(k, asyncio.to_thread(publish, temporary, path))
        start, stop = plan.shard_range(k)
        now = time.monotonic()
        self.store.add_shard(job.id, Shard(k, start, stop, size, digest, time.time()), now - mark)
        self.state.metrics.samples.labels(model.name).inc(stop - start)
        return now

    def workers(self) -> Workers:
        """Two worker processes per job that may run (one shard's latents beside another's encoding), at
        GAN_DATASET_NICE, started on first use (service.datasets.workers)."""
        if self.pool is None:
            self.pool = Workers(2 * self.settings.max_dataset_jobs, self.settings.dataset_nice)
        return self.pool
