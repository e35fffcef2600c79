"""Every limit of dataset jobs answers with the service's error shape, naming the field and the setting: rows per
job, shard size, jobs at once, the disk budget before and during a job, a full disk, retention (and a removal
killed halfway); and the errors of plans, models, unknown jobs and shards."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.datasets.runner import DatasetJobs
from service.datasets.store import Store
from tests.support import Hold, eventually
from tests.test_datasets import PLAN, create, finished, scenario


def test_plan_and_lookup_errors_name_their_field(tmp_path: Path, model_dir: Path) -> None:
    async def test(client: httpx.AsyncClient, app: Any) -> None:
        cases = [
            ({"model": "digits", "n": 5, "per_class": {"1": 2}}, 422, "body"),
            ({"model": "digits", "n": 5}, 422, "n"),  # a conditional model takes per-class counts
            ({"model": "digits", "per_class": {"cat": 2}}, 422, "per_class.cat"),
            (
                {"model": "digits", "class_counts": [1] * 10, "target": "balance"},
                422,
                "class_counts",
            ),  # 0 rows
            ({"model": "digits", "per_class": {"1": 2}, "format": "csv"}, 422, "format"),
            ({"model": "digits", "per_class": {"1": 2}, "shard_rows": 0}, 422, "shard_rows"),
            ({"model": "nope", "per_class": {"1": 2}}, 404, "model"),
            ({"model": "digits", "version": 9, "per_class": {"1": 2}}, 404, "model"),
        ]
        for body, status, field in cases:
            response = await client.post("/datasets", json=body)
            assert (response.status_code, response.json()["field"]) == (status, field), (body, response.text)
            assert response.json()["detail"]
        for path in ("/datasets/nope", "/datasets/nope/metadata", "/datasets/nope/shards/0"):
            response = await client.get(path)
            assert (response.status_code, response.json()["field"]) == (404, "id")

    scenario(tmp_path, model_dir, test)


def test_rows_per_job_and_shard_size_limits(tmp_path: Path, model_dir: Path) -> None:
    async def test(client: httpx.AsyncClient, app: Any) -> None:
        rows = await client.post("/datasets", json={"model": "digits", "per_class": {"1": 15, "2": 6}})
        assert (rows.status_code, rows.json()["field"]) == (422, "per_class")
        assert (
            "21 rows" in rows.json()["detail"]
            and "at most 20 (GAN_MAX_DATASET_ROWS)" in rows.json()["detail"]
        )
        ring = await client.post("/datasets", json={"model": "ring", "n": 21})
        assert (ring.status_code, ring.json()["field"]) == (422, "n")
        shard = await client.post(
            "/datasets", json={"model": "digits", "per_class": {"1": 20}, "shard_rows": 20}
        )
        assert (shard.status_code, shard.json()["field"]) == (422, "shard_rows")
        assert "GAN_MAX_RESPONSE_BYTES" in shard.json()["detail"]
        assert (await create(client, {"model": "digits", "per_class": {"1": 20}, "shard_rows": 5}))[
            "shards_total"
        ] == 4

    scenario(tmp_path, model_dir, test, max_dataset_rows=20, max_response_bytes=40_000)


def test_jobs_at_once_are_limited_with_a_retry_after(tmp_path: Path, model_dir: Path) -> None:
    async def test(client: httpx.AsyncClient, app: Any) -> None:
        hold = Hold(app.state.gan.repository.get("digits").batcher)
        first = await create(client, PLAN)
        await eventually(lambda: hold.entered >= 1, what="the first job in the model")
        second = await client.post("/datasets", json=PLAN)
        assert second.status_code == 429 and second.json()["field"] is None
        assert "at most 1 (GAN_MAX_DATASET_JOBS)" in second.json()["detail"]
        assert int(second.headers["retry-after"]) >= 1
        hold.gate.set()
        assert (await finished(client, first["url"]))["state"] == "done"
        await create(client, PLAN)  # a finished job no longer counts

    scenario(tmp_path, model_dir, test, max_dataset_jobs=1)


def test_the_disk_budget_is_checked_before_a_job_with_the_other_jobs_reserved(
    tmp_path: Path, model_dir: Path
) -> None:
    """A set over GAN_DATASET_DISK_BYTES is refused (507) before it starts; so is one that fits alone but not
    beside a running job's estimate; the budget freed by a deleted job is available again."""

    async def test(client: httpx.AsyncClient, app: Any) -> None:
        big = await client.post("/datasets", json=PLAN | {"per_class": {"1": 40}})
        assert (big.status_code, big.json()["field"]) == (507, "per_class")
        assert "GAN_DATASET_DISK_BYTES = 60000" in big.json()["detail"]
        hold = Hold(app.state.gan.repository.get("digits").batcher)
        running = await create(client, PLAN | {"per_class": {"1": 14}})  # about 14 x 3.5 kB reserved
        beside = await client.post("/datasets", json=PLAN | {"per_class": {"1": 14}})
        assert beside.status_code == 507 and "reserved" in beside.json()["detail"]
        assert (await client.delete(running["url"])).status_code == 204
        hold.gate.set()
        await finished(client, (await create(client, PLAN | {"per_class": {"1": 14}}))["url"])

    scenario(tmp_path, model_dir, test, dataset_disk_bytes=60_000)


def test_a_full_disk_fails_the_job_with_its_reason_and_no_partial_shard(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while shard 1 is written (as a full disk reports it at fsync): the job fails saying so, shard 0
    stays listed and downloadable, shard 1 is neither listed nor left on disk (nor is any shard after it, made
    meanwhile). The job's worker calls run in this process here, where the failing fsync is."""
    real_fsync = os.fsync

    class InProcess:
        async def call(self, function: Any, *args: Any) -> Any:
            return await asyncio.to_thread(function, *args)

    monkeypatch.setattr(DatasetJobs, "workers", lambda self: InProcess())

    def fsync(fd: int) -> None:
        if ".shard-00001" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    async def test(client: httpx.AsyncClient, app: Any) -> None:
        status = await finished(client, (await create(client, PLAN))["url"])
        assert status["state"] == "failed" and status["error"].startswith("disk full: writing shard 1 failed")
        assert "No space left on device" in status["error"]
        assert [s["k"] for s in status["shards"]] == [0]
        assert (await client.get(status["shards"][0]["url"])).status_code == 200
        assert (await client.get(f"{status['url']}/shards/1")).status_code == 404
        assert (await client.get(status["metadata_url"])).status_code == 409
        folder = app.state.datasets.folder(status["id"])
        assert sorted(p.name for p in folder.iterdir()) == ["shard-00000.tar"]

    scenario(tmp_path, model_dir, test)


def test_the_disk_budget_is_checked_again_before_every_shard(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An estimate far too low (here: 1 byte a row) lets a job start; the shard that would pass the budget fails
    the job, with the budget named, and is not written."""
    import service.datasets.limits

    monkeypatch.setattr(service.datasets.limits, "estimated_row_bytes", lambda *args: 1)

    async def test(client: httpx.AsyncClient, app: Any) -> None:
        status = await finished(client, (await create(client, PLAN))["url"])
        assert status["state"] == "failed" and "GAN_DATASET_DISK_BYTES = 25000" in status["error"]
        assert status["error"].startswith("disk budget exceeded: shard ")
        written = [s["k"] for s in status["shards"]]
        assert written and written == list(range(len(written))) and len(written) < 3
        assert status["bytes"] <= 25_000
        folder = app.state.datasets.folder(status["id"])
        assert sorted(p.name for p in folder.iterdir()) == [f"shard-{k:05d}.tar" for k in written]

    scenario(tmp_path, model_dir, test, dataset_disk_bytes=25_000)


def test_finished_jobs_expire_after_the_retention(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's 404 comes only once its files are gone, however slow their removal (here: as under load)."""
    real_rmtree = shutil.rmtree

    def slow_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.2)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", slow_rmtree)

    async def test(client: httpx.AsyncClient, app: Any) -> None:
        created = await create(client, PLAN)
        folder = app.state.datasets.folder(created["id"])

        async def gone() -> bool:
            return (await client.get(created["url"])).status_code == 404

        await eventually(gone, 60, "the finished job to expire", 0.05)
        assert not folder.exists()

    scenario(tmp_path, model_dir, test, dataset_retention_s=0.3)


def test_a_removal_killed_halfway_is_finished_at_the_next_start(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal killed after the job's files went and before its row (here: the row's delete raises) leaves its
    mark; the next start finishes it before resuming anything: the running job is not resumed and the finished
    one is not listed without its files."""

    class Killed(Exception):
        pass

    def killed(store: Store, job_id: str) -> None:
        raise Killed

    async def first(client: httpx.AsyncClient, app: Any) -> list[str]:
        done = await finished(client, (await create(client, PLAN))["url"])
        hold = Hold(app.state.gan.repository.get("digits").batcher)
        running = await create(client, PLAN)
        await eventually(lambda: hold.entered >= 1, what="the second job in the model")
        jobs, ids = app.state.datasets, [done["id"], running["id"]]
        with monkeypatch.context() as patch:
            patch.setattr(Store, "delete", killed)
            for job_id in ids:
                with pytest.raises(Killed):
                    await jobs.delete(job_id)
                assert not jobs.folder(job_id).exists()
        hold.gate.set()
        assert [(await client.get(f"/datasets/{i}")).json()["state"] for i in ids] == ["done", "running"]
        return ids

    ids = scenario(tmp_path, model_dir, first)

    async def second(client: httpx.AsyncClient, app: Any) -> None:
        for job_id in ids:
            assert (await client.get(f"/datasets/{job_id}")).status_code == 404
        assert (await client.get("/datasets")).json() == {"datasets": []} and not app.state.datasets.tasks
        assert list(app.state.datasets.datasets.iterdir()) == []  # no folder, no mark left

    scenario(tmp_path, model_dir, second)


def test_an_unwritable_data_dir_is_a_clear_503(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / "data").write_text("a file where the data directory should be")

    async def test(client: httpx.AsyncClient, app: Any) -> None:
        response = await client.post("/datasets", json=PLAN)
        assert response.status_code == 503 and "GAN_DATA_DIR" in response.json()["detail"]
        assert (await client.get("/datasets")).json() == {"datasets": []}

    scenario(tmp_path, model_dir, test)
