"""A dataset job survives `kill -9` of the service: on restart it resumes from its first incomplete shard, and
every shard, recomputed or not, is byte for byte what an uninterrupted job writes."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from tests.support import running_service, wait_until

# 15,000 rows of the 8x8 digits in 150 shards: seconds of work, and small shards, so the kill lands mid-job
# (in 30 shards of 500 rows, a loaded CI machine once saw the whole job done before the kill).
ROWS, SHARDS = 15_000, 150
BODY = {
    "model": "digits",
    "per_class": {str(c): ROWS // 10 for c in range(10)},
    "seed": 5,
    "shard_rows": ROWS // SHARDS,
}


def status(url: str, job: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/datasets/{job}", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def done(url: str, job: str, seconds: float = 300) -> dict[str, Any]:
    wait_until(lambda: status(url, job)["state"] != "running", seconds, f"job {job} to finish", interval=0.1)
    final = status(url, job)
    assert final["state"] == "done", final["error"]
    return final


def listed(data_dir: Path, job: str) -> dict[int, tuple[int, str, float]]:
    """What the database lists, read as a separate client: shard -> (bytes, sha256, written at)."""
    with sqlite3.connect(f"file:{data_dir / 'datasets.sqlite3'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT k, bytes, sha256, written_at FROM shards WHERE job_id = ?", (job,)
        ).fetchall()
        (state,) = db.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone()
    assert state == "running"
    return {k: (size, sha, at) for k, size, sha, at in rows}


def test_a_job_killed_mid_way_resumes_to_the_bytes_of_an_uninterrupted_one(
    tmp_path: Path, model_dir: Path
) -> None:
    data_dir = tmp_path / "data"
    env = {"GAN_MODEL_DIR": str(model_dir), "GAN_DATA_DIR": str(data_dir), "GAN_DATASET_NICE": "0"}
    with running_service(env) as (url, process):
        created = httpx.post(f"{url}/datasets", json=BODY, timeout=30)
        assert created.status_code == 202, created.text
        job = created.json()["id"]
        wait_until(
            lambda: status(url, job)["shards_done"] >= 1, 120, "the first shard to be listed", interval=0.01
        )
        process.kill()  # SIGKILL: no drain, no lifespan shutdown, a write may be half done
        process.wait(30)

    before = listed(data_dir, job)
    assert 1 <= len(before) < SHARDS, f"the kill landed after {len(before)} of {SHARDS} shards"
    folder = data_dir / "datasets" / job
    for k, (size, sha, _) in before.items():  # every listed shard is whole on disk
        data = (folder / f"shard-{k:05d}.tar").read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha)

    with running_service(env) as (url, _):
        resumed = done(url, job)
        assert [s["k"] for s in resumed["shards"]] == list(range(SHARDS)) and resumed["rows_done"] == ROWS
        after = {s["k"]: s for s in resumed["shards"]}
        for k, (_, sha, at) in before.items():  # listed shards were kept, not recomputed
            assert after[k]["sha256"] == sha and listed_time(data_dir, job, k) == at
        assert not list(folder.glob(".*.tmp"))
        again = httpx.post(f"{url}/datasets", json=BODY, timeout=30)
        assert again.status_code == 202
        reference = done(url, again.json()["id"])
        downloaded = [httpx.get(f"{url}{s['url']}", timeout=60) for s in resumed["shards"][:3]]

    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in reference["shards"]]
    for response, shard in zip(downloaded, resumed["shards"], strict=False):
        assert hashlib.sha256(response.content).hexdigest() == response.headers["x-sha256"] == shard["sha256"]


def listed_time(data_dir: Path, job: str, k: int) -> float:
    with sqlite3.connect(f"file:{data_dir / 'datasets.sqlite3'}?mode=ro", uri=True) as db:
        (at,) = db.execute("SELECT written_at FROM shards WHERE job_id = ? AND k = ?", (job, k)).fetchone()
    return float(at)
