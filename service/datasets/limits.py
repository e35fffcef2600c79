"""The limits a dataset job is held to when it is created, each refused with the field and the setting named:
rows per job (GAN_MAX_DATASET_ROWS), rows per shard (one shard is one download: GAN_MAX_RESPONSE_BYTES), jobs
running at once (GAN_MAX_DATASET_JOBS, 429), disk (GAN_DATASET_DISK_BYTES and the free space, 507) and one process
(GAN_WORKERS, 409). The disk budget is checked again before every shard is listed (`shard_over_budget`: the
shard over it, a temporary file until then, is removed), and a shard whose write fails on a full disk fails its job
saying so (`write_failed`, `to_the_end`)."""

from __future__ import annotations

import asyncio
import errno
import math
import shutil
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from service.datasets.shards import estimated_row_bytes
from service.datasets.spec import RowPlan
from service.datasets.store import Store
from service.errors import ApiError
from service.plans import PlanError
from service.settings import Settings

T = TypeVar("T")


def check_size(plan: RowPlan, field: str, settings: Settings) -> int:
    """The set's rows and its shards' size; returns the estimated bytes of the whole set."""
    total, spec = plan.total_rows, plan.spec
    if total == 0:
        raise PlanError("the plan asks for 0 synthetic rows", field)
    if total > settings.max_dataset_rows:
        raise PlanError(
            f"the set would have {total} rows; at most {settings.max_dataset_rows} (GAN_MAX_DATASET_ROWS)",
            field,
        )
    row_bytes = estimated_row_bytes(plan.manifest, spec.format, spec.png_provenance)
    shard_bytes = min(spec.shard_rows, total) * row_bytes
    if shard_bytes > settings.max_response_bytes:
        raise PlanError(
            f"a shard of {spec.shard_rows} rows would be about {shard_bytes} bytes; at most "
            f"{settings.max_response_bytes} (GAN_MAX_RESPONSE_BYTES: a shard is one download): use fewer",
            "shard_rows",
        )
    return total * row_bytes


def retry_after(etas: list[float | None]) -> int:
    """Seconds until the running job closest to the end finishes, at its measured rate (1 .. 3600)."""
    known = [eta for eta in etas if eta is not None]
    return max(1, min(3600, math.ceil(min(known)))) if known else 60


def check_running(running: int, settings: Settings, retry_after_s: int) -> None:
    if running >= settings.max_dataset_jobs:
        raise ApiError(
            429,
            f"{running} dataset jobs are running; at most {settings.max_dataset_jobs} (GAN_MAX_DATASET_JOBS): "
            "wait for one to finish, or delete one",
            None,
            {"Retry-After": str(retry_after_s)},
        )


def check_disk(estimate: int, store: Store, root: Path, field: str, settings: Settings) -> None:
    """The set's estimate must fit in what the budget leaves (after the shards written and the other running
    jobs' estimates) and in the disk's free space."""
    budget, used = settings.dataset_disk_bytes, store.bytes_written() + store.bytes_reserved()
    if used + estimate > budget:
        raise ApiError(
            507,
            f"the set needs about {estimate} bytes; {max(0, budget - used)} of GAN_DATASET_DISK_BYTES = {budget} "
            f"are left ({used} written or reserved by other jobs): ask for fewer rows, or delete jobs",
            field,
        )
    free = shutil.disk_usage(root).free
    if estimate > free:
        raise ApiError(
            507, f"the set needs about {estimate} bytes; the disk of GAN_DATA_DIR has {free} free", field
        )


def check_one_process(settings: Settings, what: str) -> None:
    """Creating a job, and deleting a running one, need the process that runs jobs (GAN_WORKERS=1)."""
    if settings.workers > 1:
        raise ApiError(
            409,
            f"dataset jobs are {what} only with GAN_WORKERS=1 (it is {settings.workers}): a job runs in "
            "one process, which the other workers cannot reach; recorded jobs are read, finished ones deleted",
            "GAN_WORKERS",
        )


def shard_over_budget(k: int, size: int, store: Store, settings: Settings) -> str | None:
    """Why shard k (`size` bytes) may not be written, the budget being spent (None: it may)."""
    budget, written = settings.dataset_disk_bytes, store.bytes_written()
    if written + size <= budget:
        return None
    return (
        f"disk budget exceeded: shard {k} ({size} bytes) would bring the shards to {written + size} bytes, "
        f"over GAN_DATASET_DISK_BYTES = {budget}; the shards before it are kept"
    )


def write_failed(k: int, error: OSError) -> str:
    """Why writing shard k failed; a full disk (or quota) says so."""
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    return f"{'disk full: ' if full else ''}writing shard {k} failed: {error}"


class JobFailed(Exception):
    """The job cannot go on: the message is the reason it shows."""


async def to_the_end(k: int, operation: Awaitable[T]) -> T:
    """A file operation of shard k (its write, its rename) awaited to its end even if the job is cancelled
    meanwhile: the job's files may be removed only after it. An OSError fails the job, saying so."""
    task = asyncio.ensure_future(operation)
    try:
        return await asyncio.shield(task)
    except OSError as error:
        raise JobFailed(write_failed(k, error)) from None
    except asyncio.CancelledError:
        await asyncio.gather(task, return_exceptions=True)
        raise
