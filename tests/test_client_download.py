"""gan_client's dataset calls against scripted answers: every shard's sha256 verified before it is kept,
resumed downloads, failed jobs, and the plain progress line without tqdm."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gan_client import ChecksumError, Client, DatasetFailed, Retrier, RetryPolicy

SHARDS = [b"shard zero", b"shard one!"]


def status(state: str = "done", **changes: Any) -> dict[str, Any]:
    shards = [
        {"k": k, "rows": 5, "start": 5 * k, "stop": 5 * k + 5, "bytes": len(data),
         "sha256": hashlib.sha256(data).hexdigest(), "url": f"/datasets/j1/shards/{k}"}
        for k, data in enumerate(SHARDS)
    ]  # fmt: skip
    body = {
        "id": "j1", "url": "/datasets/j1", "state": state, "model": "m", "version": 1, "onnx_sha256": "ab",
        "seed": 3, "format": "npz", "shard_rows": 5, "rows_total": 10, "rows_done": 10, "shards_total": 2,
        "shards_done": 2, "bytes": 20, "rate_rows_per_s": 100.0, "eta_s": None, "error": None,
        "created_at": "", "finished_at": None, "expires_at": None, "metadata_url": "/datasets/j1/metadata",
        "spec": {}, "shards": shards,
    }  # fmt: skip
    return body | changes


class Service:
    """A scripted /datasets service; `served` replaces a shard's bytes, `announced` its X-Sha256."""

    def __init__(self, states: list[dict[str, Any]] | None = None) -> None:
        self.states = states or [status()]
        self.served: dict[int, bytes] = {}
        self.announced: dict[int, str] = {}
        self.paths: list[str] = []
        self.sleeps: list[float] = []
        retrier = Retrier(RetryPolicy(), sleep=self.sleeps.append)
        self.client = Client("http://gan.test", transport=httpx.MockTransport(self.handle), retrier=retrier)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.path == "/datasets/j1":
            return httpx.Response(200, json=self.states.pop(0) if len(self.states) > 1 else self.states[0])
        k = int(request.url.path.rsplit("/", 1)[1])
        data = self.served.get(k, SHARDS[k])
        sha = self.announced.get(k, hashlib.sha256(SHARDS[k]).hexdigest())
        return httpx.Response(200, content=data, headers={"X-Sha256": sha})


def test_shards_are_downloaded_in_order_and_a_second_download_fetches_nothing(tmp_path: Path) -> None:
    service = Service()
    paths = service.client.download("j1", tmp_path)
    assert [p.name for p in paths] == ["shard-00000.npz", "shard-00001.npz"]
    assert [p.read_bytes() for p in paths] == SHARDS
    service.paths.clear()
    assert service.client.download("j1", tmp_path) == paths
    assert service.paths == ["/datasets/j1"]  # the status only: both files verified in place


@pytest.mark.parametrize("where", ["body", "header"])
def test_a_shard_with_other_bytes_is_refused_and_not_left_behind(tmp_path: Path, where: str) -> None:
    service = Service()
    if where == "body":
        service.served[1] = b"shard 0ne!"  # corrupted in transit: the header still names the real bytes
    else:
        service.announced[1] = "0" * 64  # the download names other bytes than the job's listing
    with pytest.raises(ChecksumError, match="shards/1"):
        service.client.download("j1", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.npz"]  # no shard 1, no temporary file


def test_a_wrong_file_already_there_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "shard-00000.npz").write_bytes(b"stale")
    paths = Service().client.download("j1", tmp_path)
    assert paths[0].read_bytes() == SHARDS[0]


def test_only_a_done_job_downloads_and_a_failed_job_raises_its_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetFailed, match="running"):
        Service([status("running")]).client.download("j1", tmp_path)
    failed = Service([status("running"), status("failed", error="model unloaded")])
    with pytest.raises(DatasetFailed, match="model unloaded"):
        failed.client.wait("j1", progress=False, sleep=lambda s: None)


def test_wait_polls_until_done_with_a_plain_line_without_tqdm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now fails as if it were not installed
    running = status("running", rows_done=5, shards_done=1, eta_s=0.5, rate_rows_per_s=10.0)
    service = Service([running, running, status()])
    polls: list[float] = []
    job = service.client.wait("j1", poll_s=0.25, sleep=polls.append)
    assert job.state == "done" and polls == [0.25, 0.25]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "dataset j1: running, 5/10 rows, 1/2 shards, 10 rows/s, ETA 0 s",  # once: it did not change
        "dataset j1: done, 10/10 rows, 2/2 shards, 100 rows/s",
    ]
