"""Dataset jobs (/datasets): create one, wait for it with a progress bar, download its shards verified.

A job writes a seeded synthetic set (the rows of /augment for the same plan and seed) as shards on the
service's disk; `download` fetches each shard, checks its sha256 against the one the service announces and
moves it into place only then, so a directory never holds a shard with the wrong bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

from gan_client.errors import ChecksumError, DatasetFailed

if TYPE_CHECKING:
    from gan_client.retry import Retrier

ShardFormat = Literal["webdataset", "parquet", "npz"]
SUFFIXES = {"webdataset": ".tar", "parquet": ".parquet", "npz": ".npz"}
TERMINAL = frozenset({"done", "failed"})
SHA256_HEADER = "x-sha256"


@dataclass(frozen=True)
class Shard:
    """One complete shard of a job: rows `start .. stop-1` of the set, its size and sha256."""

    k: int
    rows: int
    start: int
    stop: int
    bytes: int
    sha256: str
    url: str

    def file_name(self, fmt: str) -> str:
        return f"shard-{self.k:05d}{SUFFIXES.get(fmt, '')}"


@dataclass(frozen=True)
class DatasetJob:
    """A job's status as GET /datasets/{id} has it (`raw`: the whole answer)."""

    id: str
    state: str  # running | done | failed
    model: str
    version: int
    onnx_sha256: str
    seed: int
    format: str
    shard_rows: int
    rows_total: int
    rows_done: int
    shards_total: int
    shards_done: int
    rows_per_s: float | None
    eta_s: float | None
    error: str | None
    spec: dict[str, Any]  # the resolved spec (seed and version fixed): create_dataset(**spec) redoes the job
    shards: list[Shard] | None  # GET /datasets/{id} only: the complete ones
    raw: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL


def parse_shard(body: dict[str, Any]) -> Shard:
    """A shard of the listing (fields the client does not know are ignored: the service may add some)."""
    return Shard(**{f.name: body[f.name] for f in dataclasses.fields(Shard)})


def parse_job(body: dict[str, Any]) -> DatasetJob:
    listed = body.get("shards")
    return DatasetJob(
        id=body["id"], state=body["state"], model=body["model"], version=body["version"],
        onnx_sha256=body["onnx_sha256"], seed=body["seed"], format=body["format"], shard_rows=body["shard_rows"],
        rows_total=body["rows_total"], rows_done=body["rows_done"], shards_total=body["shards_total"],
        shards_done=body["shards_done"], rows_per_s=body.get("rate_rows_per_s"), eta_s=body.get("eta_s"),
        error=body.get("error"), spec=body.get("spec") or {},
        shards=[parse_shard(s) for s in listed] if listed is not None else None, raw=body,
    )  # fmt: skip


JobRef = str | DatasetJob  # a job's id, or its status


def job_id_of(job: JobRef) -> str:
    return job.id if isinstance(job, DatasetJob) else job


class DatasetCalls:
    """The /datasets calls of `Client`, which sends them (`request`, under its retrier)."""

    http: httpx.Client
    retrier: Retrier

    def request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        raise NotImplementedError

    def create_dataset(
        self,
        model: str,
        *,
        seed: int | None = None,
        per_class: Mapping[str, int] | None = None,
        class_counts: Mapping[str, int] | Sequence[int] | None = None,
        target: Literal["balance"] | None = None,
        ratio: float | None = None,
        n: int | None = None,
        truncation: float | None = None,
        shard_rows: int | None = None,
        format: ShardFormat | None = None,
        version: int | None = None,
        png_provenance: bool | None = None,
    ) -> DatasetJob:
        """Start a job writing the set of /augment's plan and seed; its status (`.id`). The rows are
        /augment's rows: row j has latent (seed, j) and the class the plan puts at j.

        POST creates a job, so only a refusal (429, 503) is retried, never a transport error.
        """
        counts = dict(class_counts) if isinstance(class_counts, Mapping) else class_counts
        body: dict[str, Any] = {
            "model": model, "version": version, "seed": seed, "per_class": dict(per_class) if per_class else None,
            "class_counts": list(counts) if isinstance(counts, Sequence) else counts, "target": target,
            "ratio": ratio, "n": n, "truncation": truncation, "shard_rows": shard_rows, "format": format,
            "png_provenance": png_provenance,
        }  # fmt: skip
        json = {k: v for k, v in body.items() if v is not None}
        return parse_job(self.request("POST", "/datasets", json=json, idempotent=False).json())

    def datasets(self) -> list[DatasetJob]:
        return [parse_job(j) for j in self.request("GET", "/datasets", idempotent=True).json()["datasets"]]

    def dataset(self, job: JobRef) -> DatasetJob:
        return parse_job(self.request("GET", f"/datasets/{job_id_of(job)}", idempotent=True).json())

    def metadata(self, job: JobRef) -> dict[str, Any]:
        """The job's Croissant (JSON-LD) metadata."""
        path = f"/datasets/{job_id_of(job)}/metadata"
        body: dict[str, Any] = self.request("GET", path, idempotent=True).json()
        return body

    def delete_dataset(self, job: JobRef) -> None:
        """Cancel the job if it runs, and remove it with its shards (a second delete answers 404)."""
        self.request("DELETE", f"/datasets/{job_id_of(job)}", idempotent=True)

    def wait(
        self,
        job: JobRef,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
        progress: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> DatasetJob:
        """Poll the job until it is done, showing its progress (a tqdm bar, or a plain line without tqdm).

        DatasetFailed when it fails (with the job's error); TimeoutError after `timeout_s`.
        """
        job_id = job_id_of(job)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = _Progress(job_id) if progress else None
        try:
            while True:
                job = self.dataset(job_id)
                if bar is not None:
                    bar.show(job)
                if job.finished:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"dataset {job_id} not done within {timeout_s:g} s: {job.state}")
                sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()
        if job.state != "done":
            raise DatasetFailed(f"dataset {job_id} {job.state}: {job.error or 'no reason given'}")
        return job

    def download(self, job: JobRef, directory: str | os.PathLike[str]) -> list[Path]:
        """Every shard of a done job into `directory` (shard-00000.tar, ...), each verified; the paths in order.

        Each shard's sha256 is the job's listing's, and must be the download's X-Sha256 and the received
        bytes' own: a shard moves into place only then, so the directory never holds wrong bytes. A shard
        already there with the right sha256 is not fetched again (a download resumes); ChecksumError when
        the bytes are not the ones announced.
        """
        job = self.dataset(job)  # fresh, with the shard list
        if job.state != "done":
            raise DatasetFailed(f"dataset {job.id} is {job.state}, not done: wait() for it first")
        shards = sorted(job.shards or [], key=lambda s: s.k)
        if [s.k for s in shards] != list(range(job.shards_total)):
            raise DatasetFailed(f"dataset {job.id} lists {len(shards)} of its {job.shards_total} shards")
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        return [_download_shard(self, shard, target / shard.file_name(job.format)) for shard in shards]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download_shard(client: DatasetCalls, shard: Shard, destination: Path) -> Path:
    """One shard streamed to a temporary file beside `destination`, verified, then renamed into place."""
    if destination.exists() and sha256_of(destination) == shard.sha256:
        return destination

    def attempt() -> httpx.Response:
        with client.http.stream("GET", shard.url) as response:
            if not response.is_success:
                response.read()
                return response
            announced = response.headers.get(SHA256_HEADER)
            if announced != shard.sha256:
                raise ChecksumError(f"{shard.url}: X-Sha256 is {announced}, the job lists {shard.sha256}")
            digest = hashlib.sha256()
            fd, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    for chunk in response.iter_bytes(1 << 20):
                        digest.update(chunk)
                        f.write(chunk)
                if digest.hexdigest() != shard.sha256:
                    raise ChecksumError(
                        f"{shard.url}: received sha256 {digest.hexdigest()}, announced {shard.sha256}"
                    )
                os.replace(temporary, destination)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            return response

    client.retrier.send(attempt, idempotent=True, what=f"GET {shard.url}")
    return destination


class _Progress:
    """tqdm when it is installed; otherwise one plain line per change (rewritten in place on a terminal)."""

    def __init__(self, job_id: str) -> None:
        self.job_id, self.last = job_id, ""
        self.bar: Any = None
        try:
            self.tqdm: Any = importlib.import_module("tqdm").tqdm  # optional: the `progress` extra
        except ImportError:
            self.tqdm = None

    def show(self, job: DatasetJob) -> None:
        shards = f"{job.shards_done}/{job.shards_total} shards"
        if self.tqdm is not None:
            if self.bar is None:  # opened once the total is known
                self.bar = self.tqdm(desc=f"dataset {self.job_id}", total=job.rows_total, unit="row")
            self.bar.update(job.rows_done - self.bar.n)
            self.bar.set_postfix_str(f"{job.state}, {shards}", refresh=True)
            return
        rate = f", {job.rows_per_s:.0f} rows/s" if job.rows_per_s else ""
        eta = f", ETA {job.eta_s:.0f} s" if job.eta_s is not None and not job.finished else ""
        line = (
            f"dataset {self.job_id}: {job.state}, {job.rows_done}/{job.rows_total} rows, {shards}{rate}{eta}"
        )
        if line != self.last:
            end = "\r" if sys.stderr.isatty() and not job.finished else "\n"
            print(line, end=end, file=sys.stderr, flush=True)
            self.last = line

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
