"""HTTP routes of dataset jobs: create, list, status, shards, Croissant metadata, delete (service.datasets.runner
does the work)."""

from __future__ import annotations

import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from service.datasets.croissant import CONFORMS_TO, describe
from service.datasets.runner import DatasetJobs
from service.datasets.shards import MEDIA_TYPES, shard_name
from service.datasets.spec import DatasetRequest
from service.datasets.store import Job
from service.encoding import SOFTWARE
from service.errors import ApiError, problem_response
from service.routes import error_responses, model_label
from service.schemas import ErrorResponse
from service.state import AppState


class SharedPathRoute(APIRoute):
    """A route whose 405 names every method of its path, not only its own: GET and POST share /datasets, GET and
    DELETE /datasets/{id}, and Starlette answers with the first route whose path matches."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            routes = [r for r in router.routes if isinstance(r, APIRoute) and r.path == self.path]
            methods = {m for r in routes for m in r.methods or ()}
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(methods))})
        await super().handle(scope, receive, send)


router = APIRouter(responses=error_responses(401, 503), tags=["datasets"], route_class=SharedPathRoute)
WHAT = {
    404: "no such job (or model, or shard not written yet)",
    409: "the job is not done: its metadata describes the finished set",
    422: "invalid request: `field` names the field, `detail` the limit (GAN_MAX_DATASET_ROWS, shard size)",
    429: "GAN_MAX_DATASET_JOBS jobs are running: retry after the Retry-After header's seconds",
    507: "over GAN_DATASET_DISK_BYTES, or more than the disk of GAN_DATA_DIR has free",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": WHAT[code]} for code in codes}


JobId = Annotated[str, Path(min_length=1, max_length=64, description="the job's id")]


class ShardInfo(BaseModel):
    k: int
    rows: int
    start: int = Field(description="first index (the latent (seed, j) of row j)")
    stop: int = Field(description="one past the last index")
    bytes: int
    sha256: str
    url: str


class DatasetStatus(BaseModel):
    id: str
    url: str
    state: str = Field(description="running | done | failed")
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
    bytes: int = Field(description="bytes of the listed shards")
    rate_rows_per_s: float | None = Field(description="while running: this run's rate; done: the whole job's")
    eta_s: float | None
    error: str | None = Field(description="failed: why")
    created_at: str
    finished_at: str | None
    expires_at: str | None = Field(description="finished jobs are removed then (GAN_DATASET_RETENTION_S)")
    metadata_url: str
    spec: dict[str, Any] = Field(
        description="the resolved spec (seed and version fixed): POST it to redo the job"
    )
    shards: list[ShardInfo] | None = Field(None, description="the complete shards (GET /datasets/{id} only)")


class DatasetList(BaseModel):
    datasets: list[DatasetStatus]


async def get_jobs(request: Request) -> DatasetJobs:
    jobs: DatasetJobs = request.app.state.datasets
    return jobs


JobsDep = Annotated[DatasetJobs, Depends(get_jobs)]


def iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def status(jobs: DatasetJobs, job: Job, with_shards: bool) -> DatasetStatus:
    shards = jobs.shards(job.id)
    rate, eta = jobs.progress(job)
    url = f"/datasets/{job.id}"
    retention = jobs.settings.dataset_retention_s
    return DatasetStatus(
        id=job.id, url=url, state=job.state, model=job.model, version=job.version, onnx_sha256=job.onnx_sha256,
        seed=job.spec["seed"], format=job.spec["format"], shard_rows=job.spec["shard_rows"],
        rows_total=job.total_rows, rows_done=sum(s.rows for s in shards), shards_total=job.shards,
        shards_done=len(shards), bytes=sum(s.bytes for s in shards), rate_rows_per_s=rate, eta_s=eta,
        error=job.error, created_at=iso(job.created_at) or "", finished_at=iso(job.finished_at),
        expires_at=iso(job.finished_at + retention) if job.finished_at is not None else None,
        metadata_url=f"{url}/metadata", spec=job.spec,
        shards=[ShardInfo(k=s.k, rows=s.rows, start=s.start, stop=s.stop, bytes=s.bytes, sha256=s.sha256,
                          url=f"{url}/shards/{s.k}") for s in shards] if with_shards else None,
    )  # fmt: skip


CREATE_ERRORS = error_responses(413) | responses(404, 422, 429, 507)


@router.post("/datasets", status_code=202, response_model=DatasetStatus, responses=CREATE_ERRORS)
async def create_dataset(body: DatasetRequest, request: Request, jobs: JobsDep) -> Response:
    """Start a job writing the labelled synthetic set of /augment's plan to disk in shards; 202 with its status.

    The rows are /augment's for the same plan and seed: row j has latent (seed, j) and the class the plan puts at j.
    The job runs in the batchers' background lane, on capacity interactive requests leave idle.
    """
    state: AppState = request.app.state.gan
    try:
        job = jobs.create(body)
    except Exception as error:
        return problem_response(error, state, model_label(state, body.model))
    payload = status(jobs, job, with_shards=False).model_dump(mode="json")
    return JSONResponse(payload, status_code=202, headers={"Location": payload["url"], "X-Model": job.model})


@router.get("/datasets", response_model=DatasetList)
async def list_datasets(jobs: JobsDep) -> DatasetList:
    """Every job, oldest first: state, progress, errors (without the shard lists)."""
    return DatasetList(datasets=[status(jobs, job, with_shards=False) for job in jobs.jobs()])


@router.get("/datasets/{id}", response_model=DatasetStatus, responses=responses(404, 422))
async def get_dataset(id: JobId, jobs: JobsDep) -> DatasetStatus:
    """State, rows done / total, shards done (each with its sha256), rate and ETA, and the error if it failed."""
    return status(jobs, jobs.job(id), with_shards=True)


SHARD_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the shard's bytes (tar, parquet or npz); its sha256 in X-Sha256 (and the ETag)",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}}
            for media in sorted(set(MEDIA_TYPES.values()))
        },
    }
}


@router.get("/datasets/{id}/shards/{k}", response_class=Response, responses=SHARD_200 | responses(404, 422))
async def get_shard(id: JobId, k: Annotated[int, Path(ge=0, le=1 << 40)], jobs: JobsDep) -> Response:
    """One complete shard, streamed from disk (404 until it is complete)."""
    job = jobs.job(id)
    shard = next((s for s in jobs.shards(id) if s.k == k), None)
    if shard is None:
        raise ApiError(
            404, f"shard {k} of job {id} is not written (yet): {job.shards} shards, state {job.state}", "k"
        )
    name = shard_name(k, job.spec["format"])
    path = jobs.folder(id) / name
    if not path.is_file():  # removed meanwhile (a delete, the retention)
        raise ApiError(404, f"shard {k} of job {id} is gone", "k")
    headers = {"X-Sha256": shard.sha256, "ETag": f'"{shard.sha256}"', "X-Sample-Start": str(shard.start),
               "X-Sample-Count": str(shard.rows)}  # fmt: skip
    return FileResponse(path, media_type=MEDIA_TYPES[job.spec["format"]], headers=headers, filename=name)


METADATA_200: dict[int | str, dict[str, Any]] = {
    200: {
        "description": f"Croissant ({CONFORMS_TO}) JSON-LD",
        "content": {"application/ld+json": {"schema": {"type": "object"}}},
    }
}


@router.get(
    "/datasets/{id}/metadata", response_class=Response, responses=METADATA_200 | responses(404, 409, 422)
)
async def get_metadata(id: JobId, request: Request, jobs: JobsDep) -> Response:
    """The Croissant 1.1 description of a finished job: every shard with its sha256, the fields, the class names,
    the provenance (model, version, ONNX sha256, seed, index ranges, plan). 409 until the job is done."""
    job = jobs.job(id)
    if job.state != "done":
        raise ApiError(409, f"job {id} is {job.state}: its metadata describes the finished set", "id")
    url = f"{str(request.base_url).rstrip('/')}/datasets/{id}"
    body = describe(job, jobs.shards(id), url, SOFTWARE)
    return JSONResponse(body, media_type=f'application/ld+json; profile="{CONFORMS_TO}"')


@router.delete("/datasets/{id}", status_code=204, response_class=Response, responses=responses(404, 422))
async def delete_dataset(id: JobId, jobs: JobsDep) -> Response:
    """Cancel the job if it runs and remove it with its shards."""
    await jobs.delete(id)
    return Response(status_code=204)
