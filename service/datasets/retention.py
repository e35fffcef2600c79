"""Removing dataset jobs: a DELETE, and the retention sweep (finished jobs older than GAN_DATASET_RETENTION_S,
every quarter of it and at least every minute, by worker 0 alone: service.workers).

A removal deletes the job's row, then its folder; the next start removes the folders without a row (a removal
killed between its two steps) before any job resumes (`recover`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from service.datasets.store import Store

log = logging.getLogger("service.datasets")


async def remove(store: Store, datasets: Path, job_id: str) -> None:
    """Remove a job that no task runs: its row first, then its files."""
    store.delete(job_id)
    await asyncio.to_thread(shutil.rmtree, datasets / job_id, True)


async def recover(store: Store, datasets: Path) -> None:
    """At start-up: remove the folders without a job (a removal killed between its two steps)."""
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
