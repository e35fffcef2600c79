"""Removing dataset jobs, crash-safely: a DELETE, and the retention sweep (finished jobs older than
GAN_DATASET_RETENTION_S, every quarter of it and at least every minute, by worker 0 alone: service.workers).

A removal marks the job first (`.<id>.deleting` beside the job folders), then removes its folder, then its row,
then the mark: the job answers 404 only once its files are gone. A removal killed at any step leaves its mark,
and the next start finishes it (`recover`) before any job resumes, so a job is never resumed, or left listed,
with its files half removed. A folder without a row (its removal failed) is removed then too.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.datasets.store import Store
from service.files import fsync_folder

log = logging.getLogger("service.datasets")
MARK = ".deleting"


def mark_path(datasets: Path, job_id: str) -> Path:
    return datasets / f".{job_id}{MARK}"


def _mark(path: Path) -> None:
    """The mark, made durable (with the folder's fsync) before anything is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    fsync_folder(path.parent)


async def remove(store: Store, datasets: Path, job_id: str) -> None:
    """Remove a job that no task runs: mark, folder, row, unmark (each step may be repeated)."""
    mark = mark_path(datasets, job_id)
    await asyncio.to_thread(_mark, mark)
    await asyncio.to_thread(shutil.rmtree, datasets / job_id, True)
    store.delete(job_id)
    mark.unlink(missing_ok=True)


async def recover(store: Store, datasets: Path) -> None:
    """At start-up: finish the removals a kill interrupted, then remove the folders without a job."""
    for mark in sorted(datasets.glob(f".*{MARK}")):
        job_id = mark.name[1 : -len(MARK)]
        if not job_id or job_id.startswith("."):  # not a mark of ours: a job id is hex
            continue
        log.info("dataset job %s: finishing its removal, interrupted by the last stop", job_id)
        await remove(store, datasets, job_id)
    known = {job.id for job in store.jobs()}
    for orphan in datasets.glob("*"):
        if orphan.is_dir() and orphan.name not in known:
            await asyncio.to_thread(shutil.rmtree, orphan, True)


async def expire(store: Store, datasets: Path, retention_s: float) -> None:
    """Remove finished jobs older than GAN_DATASET_RETENTION_S."""
    for job_id in store.expired(time.time() - retention_s):
        log.info("dataset job %s: expired (GAN_DATASET_RETENTION_S)", job_id)
        await remove(store, datasets, job_id)


def sweep_interval(retention_s: float) -> float:
    return min(60.0, max(0.05, retention_s / 4))


async def sweep_forever(interval: float, sweep: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep()
        except Exception:  # a failed removal is retried at the next sweep; the sweeper goes on
            log.exception("dataset retention sweep failed")
