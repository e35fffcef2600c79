"""Dataset jobs in-process: shards are /augment's rows, load with webdataset, pyarrow and numpy, are identical
for identical specs, and are described by Croissant metadata that mlcroissant validates; status, listing and
cancellation. Limits are in tests/test_datasets_limits.py, the service killed mid-job in
tests/test_datasets_process.py, the Indexed Job's code path in tests/test_datasets_cli.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.main import create_app
from service.settings import Settings
from tests.support import Hold, asgi_client, eventually

# digits: 8x8, 10 classes. Three shards of 5, 5 and 2 rows, classes 3, 7 and 0 in the plan's order.
PLAN = {"model": "digits", "per_class": {"7": 4, "3": 5, "0": 3}, "seed": 11, "shard_rows": 5}


def settings(tmp_path: Path, model_dir: Path, **more: Any) -> Settings:
    return Settings(model_dir=model_dir, data_dir=tmp_path / "data", **more)


def scenario(
    tmp_path: Path, model_dir: Path, test: Callable[[httpx.AsyncClient, Any], Awaitable[Any]], **more: Any
) -> Any:
    async def main() -> Any:
        app = create_app(settings(tmp_path, model_dir, **more))
        async with asgi_client(app) as client:
            return await test(client, app)

    return asyncio.run(main())


async def finished(client: httpx.AsyncClient, url: str, seconds: float = 120) -> dict[str, Any]:
    """The job's status once it is no longer running."""
    status: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal status
        status = (await client.get(url)).json()
        return bool(status["state"] != "running")

    await eventually(done, seconds, lambda: f"job {url} to finish (now {status.get('rows_done')} rows)", 0.02)
    return status


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/datasets", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == response.json()["url"]
    created: dict[str, Any] = response.json()
    return created


async def shard_bytes(client: httpx.AsyncClient, status: dict[str, Any]) -> list[bytes]:
    """Every shard downloaded, its X-Sha256 header checked against its bytes and the status."""
    out = []
    for shard in status["shards"]:
        response = await client.get(shard["url"])
        assert response.status_code == 200
        digest = hashlib.sha256(response.content).hexdigest()
        assert response.headers["x-sha256"] == digest == shard["sha256"]
        assert len(response.content) == shard["bytes"]
        out.append(response.content)
    return out


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return dict(npz)


async def augment_page(
    client: httpx.AsyncClient, body: dict[str, Any], start: int, rows: int, fmt: str
) -> Any:
    plan = {k: v for k, v in body.items() if k not in ("shard_rows", "format")}
    response = await client.post("/augment", json=plan | {"offset": start, "limit": rows, "format": fmt})
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content)) if fmt == "npz" else response.json()


def test_shards_hold_augments_rows_in_every_format(tmp_path: Path, model_dir: Path) -> None:
    """Each shard is /augment's page for the same rows: npz arrays equal, and the PNGs of webdataset and parquet
    shards are /augment's PNGs byte for byte (same pixels, same provenance chunks)."""
    import pyarrow.parquet as pq

    async def test(client: httpx.AsyncClient, app: Any) -> None:
        for fmt in ("npz", "webdataset", "parquet"):
            created = await create(client, PLAN | {"format": fmt})
            assert (created["state"], created["rows_total"], created["shards_total"]) == ("running", 12, 3)
            status = await finished(client, created["url"])
            assert (status["state"], status["rows_done"], status["shards_done"], status["error"]) == (
                "done", 12, 3, None,
            )  # fmt: skip
            assert [(s["start"], s["stop"]) for s in status["shards"]] == [(0, 5), (5, 10), (10, 12)]
            assert status["rate_rows_per_s"] > 0 and status["spec"]["version"] == 1
            for shard, data in zip(status["shards"], await shard_bytes(client, status), strict=True):
                start, rows = shard["start"], shard["rows"]
                page = await augment_page(client, PLAN, start, rows, "npz")
                if fmt == "npz":
                    got = np.load(io.BytesIO(data))
                    assert sorted(got.files) == sorted(page.files)
                    for name in page.files:
                        np.testing.assert_array_equal(got[name], page[name])
                    continue
                pngs = [
                    base64.b64decode(i)
                    for i in (await augment_page(client, PLAN, start, rows, "png"))["images"]
                ]
                if fmt == "webdataset":
                    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
                    keys = [f"{i:010d}" for i in page["index"]]
                    assert list(members) == [f"{k}.{e}" for k in keys for e in ("png", "cls", "json")]
                    assert [members[f"{k}.png"] for k in keys] == pngs
                    assert [int(members[f"{k}.cls"]) for k in keys] == page["y"].tolist()
                    meta = [json.loads(members[f"{k}.json"]) for k in keys]
                    assert [(m["index"], m["seed"], m["label"]) for m in meta] == list(
                        zip(page["index"].tolist(), [11] * rows, page["y"].tolist(), strict=True)
                    )
                else:
                    table = pq.read_table(io.BytesIO(data))
                    assert table.column_names == ["image", "label", "class_name", "seed", "index"]
                    assert table.column("image").to_pylist() == pngs
                    assert table.column("label").to_pylist() == page["y"].tolist()
                    assert table.column("index").to_pylist() == page["index"].tolist()

    scenario(tmp_path, model_dir, test)


# webdataset leaves its tar files for the garbage collector to close
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_shards_load_with_webdataset_pyarrow_and_numpy(tmp_path: Path, model_dir: Path) -> None:
    """Downloaded shards open with the libraries people train with, and hold the same samples in all formats;
    vector models write KEY.npy / an `x` column."""
    import pyarrow.parquet as pq
    import webdataset as wds

    async def test(client: httpx.AsyncClient, app: Any) -> dict[str, list[Path]]:
        files: dict[str, list[Path]] = {}
        for name, body in {
            "webdataset": PLAN | {"format": "webdataset"},
            "parquet": PLAN | {"format": "parquet"},
            "npz": PLAN | {"format": "npz"},
            "ring-webdataset": {"model": "ring", "n": 7, "seed": 2, "shard_rows": 4, "format": "webdataset"},
            "ring-parquet": {"model": "ring", "n": 7, "seed": 2, "shard_rows": 4, "format": "parquet"},
            "ring-npz": {"model": "ring", "n": 7, "seed": 2, "shard_rows": 4, "format": "npz"},
        }.items():
            status = await finished(client, (await create(client, body))["url"])
            folder = tmp_path / "downloads" / name
            folder.mkdir(parents=True)
            files[name] = []
            for shard, data in zip(status["shards"], await shard_bytes(client, status), strict=True):
                path = folder / f"shard-{shard['k']:05d}.{body['format'].replace('webdataset', 'tar')}"
                path.write_bytes(data)
                files[name].append(path)
        return files

    files = scenario(tmp_path, model_dir, test)
    npz = [arrays(p) for p in files["npz"]]
    x, y = np.concatenate([a["x"] for a in npz]), np.concatenate([a["y"] for a in npz])
    assert x.shape == (12, 8, 8, 1) and x.dtype == np.uint8 and y.tolist() == [0] * 3 + [3] * 5 + [7] * 4

    samples = list(wds.WebDataset([str(p) for p in files["webdataset"]], shardshuffle=False).decode("rgb8"))
    assert [s["__key__"] for s in samples] == [f"{i:010d}" for i in range(12)]
    assert [s["cls"] for s in samples] == y.tolist() and [s["json"]["index"] for s in samples] == list(
        range(12)
    )
    np.testing.assert_array_equal(np.stack([s["png"][:, :, :1] for s in samples]), x)  # rgb8: grey x 3

    table = pq.ParquetDataset([str(p) for p in files["parquet"]]).read()
    assert table.num_rows == 12 and table.column("label").to_pylist() == y.tolist()
    decoded = [
        np.asarray(Image.open(io.BytesIO(png)))[:, :, None] for png in table.column("image").to_pylist()
    ]
    np.testing.assert_array_equal(np.stack(decoded), x)

    points = np.concatenate([arrays(p)["x"] for p in files["ring-npz"]])
    assert points.shape == (7, 2) and points.dtype == np.float32
    ring = list(wds.WebDataset([str(p) for p in files["ring-webdataset"]], shardshuffle=False).decode())
    np.testing.assert_array_equal(np.stack([s["npy"] for s in ring]), points)
    assert "cls" not in ring[0] and ring[0]["json"]["seed"] == 2
    column = pq.ParquetDataset([str(p) for p in files["ring-parquet"]]).read().column("x").to_pylist()
    np.testing.assert_array_equal(np.array(column, dtype=np.float32), points)


def test_identical_specs_give_identical_shards_and_another_seed_does_not(
    tmp_path: Path, model_dir: Path
) -> None:
    async def test(client: httpx.AsyncClient, app: Any) -> list[list[str]]:
        digests = []
        for body in (PLAN, PLAN, PLAN | {"seed": 12}):
            status = await finished(client, (await create(client, body | {"format": "webdataset"}))["url"])
            digests.append([s["sha256"] for s in status["shards"]])
        listing = (await client.get("/datasets")).json()["datasets"]
        assert [d["state"] for d in listing] == ["done"] * 3 and all(d["shards"] is None for d in listing)
        return digests

    first, second, other = scenario(tmp_path, model_dir, test)
    assert first == second and len(set(first)) == 3
    assert not set(other) & set(first)


MLCROISSANT = pytest.mark.filterwarnings(
    "ignore:ConjunctiveGraph is deprecated:DeprecationWarning"
)  # rdflib's


@MLCROISSANT
@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)  # mlcroissant leaves files open
def test_croissant_metadata_validates_and_loads_with_mlcroissant(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metadata of every format validates with mlcroissant (errors fail, warnings are allowed); it lists each
    shard with its sha256, the class names, and the provenance; mlcroissant reads the parquet records back."""
    import mlcroissant as mlc
    from etils import epath
    from mlcroissant._src.core import constants
    from mlcroissant._src.operation_graph.operations import extract

    cache = epath.Path(tmp_path / "croissant-cache")  # not ~/.cache/croissant
    monkeypatch.setattr(constants, "DOWNLOAD_PATH", cache / "download")
    monkeypatch.setattr(extract, "EXTRACT_PATH", cache / "extract")

    async def test(client: httpx.AsyncClient, app: Any) -> dict[str, Any]:
        running = await create(client, PLAN | {"format": "parquet"})
        out = {}
        early = await client.get(f"{running['url']}/metadata")
        assert early.status_code in (200, 409)  # 409 while the job runs
        for fmt in ("webdataset", "parquet", "npz"):
            status = await finished(client, (await create(client, PLAN | {"format": fmt}))["url"])
            response = await client.get(status["metadata_url"])
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/ld+json")
            out[fmt] = (status, response.json(), await shard_bytes(client, status))
        return out

    described = scenario(tmp_path, model_dir, test)
    for fmt, (status, jsonld, data) in described.items():
        dataset = mlc.Dataset(jsonld=jsonld)  # raises mlc.ValidationError on any error
        assert dataset.metadata.ctx.is_v1_1()
        files = {d["@id"]: d for d in jsonld["distribution"] if d["@type"] == "cr:FileObject"}
        assert [f["sha256"] for f in files.values()] == [s["sha256"] for s in status["shards"]]
        assert [f["contentUrl"] for f in files.values()] == [f"http://t{s['url']}" for s in status["shards"]]
        classes = next(r for r in jsonld["recordSet"] if r["@id"] == "classes")
        assert [row["classes/name"] for row in classes["data"]] == [str(d) for d in range(10)]
        generation = jsonld["prov:wasGeneratedBy"]["generation"]
        assert (generation["model"], generation["version"], generation["seed"]) == ("digits", 1, 11)
        assert generation["onnx_sha256"] == status["onnx_sha256"] == jsonld["prov:wasDerivedFrom"]["@id"][11:]
        assert generation["plan"] == {"per_class": {"7": 4, "3": 5, "0": 3}}
        assert generation["class_index_ranges"] == [
            {"label": 0, "start": 0, "stop": 3}, {"label": 3, "start": 3, "stop": 8},
            {"label": 7, "start": 8, "stop": 12},
        ]  # fmt: skip
        assert [(s["start"], s["stop"]) for s in generation["shards"]] == [(0, 5), (5, 10), (10, 12)]
        if fmt == "webdataset":  # the records themselves, read by mlcroissant from the downloaded shards
            local = tmp_path / "croissant"
            local.mkdir()
            mapping = {}
            for name, blob in zip(files, data, strict=True):
                (local / name).write_bytes(blob)
                mapping[name] = local / name  # by the FileObject's @id
            records = list(mlc.Dataset(jsonld=jsonld, mapping=mapping).records("samples"))
            assert sorted(r["samples/key"].decode() for r in records) == [f"{i:010d}" for i in range(12)]
            image = next(r for r in records if r["samples/key"] == b"0000000000")["samples/image"]
            assert image.size == (8, 8)


@MLCROISSANT
def test_metadata_validation_can_fail() -> None:
    """mlcroissant refuses a description with a broken reference: the validation above means something."""
    import mlcroissant as mlc

    from service.datasets.croissant import CONTEXT

    broken = {
        "@context": CONTEXT, "@type": "sc:Dataset", "conformsTo": "http://mlcommons.org/croissant/1.1",
        "name": "broken", "description": "d", "url": "http://t/", "distribution": [],
        "recordSet": [{"@type": "cr:RecordSet", "@id": "r", "name": "r", "field": [
            {"@type": "cr:Field", "@id": "r/x", "name": "x", "dataType": "sc:Integer",
             "source": {"fileSet": {"@id": "missing"}, "extract": {"column": "x"}}}]}],
    }  # fmt: skip
    with pytest.raises(mlc.ValidationError):
        mlc.Dataset(jsonld=broken)


def test_delete_cancels_a_running_job_and_removes_it(tmp_path: Path, model_dir: Path) -> None:
    """DELETE while the job's rows wait in the batcher: they are dropped, the job and its files are gone."""

    async def test(client: httpx.AsyncClient, app: Any) -> None:
        batcher = app.state.gan.repository.get("digits").batcher
        hold = Hold(batcher)
        created = await create(client, PLAN | {"n": None, "per_class": {"1": 400}, "shard_rows": 100})
        await eventually(
            lambda: hold.entered == 2 and batcher.background_rows > 0,
            what="two background batches held in the model and the next shard's rows queued",
        )
        folder = app.state.datasets.folder(created["id"])
        assert folder.is_dir()
        response = await client.delete(created["url"])
        assert response.status_code == 204
        assert batcher.background_rows == 0  # the queued rows of the cancelled job are dropped
        hold.gate.set()
        assert (await client.get(created["url"])).status_code == 404
        assert (
            await client.post("/generate", json={"model": "digits", "n": 2, "seed": 1})
        ).status_code == 200
        assert hold.entered == 3  # the two held batches, then /generate's: nothing more of the job
        assert (await client.get(f"{created['url']}/shards/0")).status_code == 404
        again = await client.delete(created["url"])
        assert again.status_code == 404 and again.json()["field"] == "id"
        assert not folder.exists() and (await client.get("/datasets")).json() == {"datasets": []}

    scenario(tmp_path, model_dir, test)


def test_a_job_keeps_its_version_through_an_unload(tmp_path: Path, model_dir: Path) -> None:
    """Model control takes the version out of service while a job runs on it: the job holds it and finishes with
    the shards an undisturbed job writes; new requests already see the model gone."""

    async def test(client: httpx.AsyncClient, app: Any) -> tuple[list[str], list[str]]:
        body = PLAN | {"per_class": {"2": 60}, "shard_rows": 20, "format": "npz"}
        reference = await finished(client, (await create(client, body))["url"])
        hold = Hold(app.state.gan.repository.get("digits").batcher)
        created = await create(client, body)
        await eventually(lambda: hold.entered >= 1, what="the job's first batch in the model")
        await app.state.gan.control.unload("digits")
        assert (await client.post("/generate", json={"model": "digits"})).status_code == 404
        hold.gate.set()
        status = await finished(client, created["url"])
        assert status["state"] == "done"
        return [s["sha256"] for s in reference["shards"]], [s["sha256"] for s in status["shards"]]

    reference, after = scenario(tmp_path, model_dir, test)
    assert reference == after
