"""The limits a dataset job is held to when it is created, each refused with the field and the setting named:
rows per job (GAN_MAX_DATASET_ROWS), rows per shard (one shard is one download: GAN_MAX_RESPONSE_BYTES), jobs
running at once (GAN_MAX_DATASET_JOBS, 429) and disk (GAN_DATASET_DISK_BYTES and the free space, 507). The disk
is checked again before every shard is written (service.datasets.runner)."""

from __future__ import annotations

import shutil
from pathlib import Path

from service.datasets.shards import estimated_row_bytes
from service.datasets.spec import RowPlan
from service.datasets.store import Store
from service.errors import ApiError
from service.plans import PlanError
from service.settings import Settings


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
