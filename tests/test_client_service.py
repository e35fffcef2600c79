"""gan_client against a real `python -m service` on 127.0.0.1 with a tiny queue, so that it sheds load:
typed calls, retries through 429s with the same bytes as unloaded calls, dataset jobs downloaded and
verified, and the torch IterableDataset giving the same rows for 0, 1 and 2 DataLoader workers."""

from __future__ import annotations

import hashlib
import random
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gan_client import ApiError, Client, Retrier, RetryPolicy, Samples
from tests.support import ROOT, running_service

MODEL = "fashion-cgan"
ROWS = 64  # GAN_MAX_N, GAN_MAX_PAGE_ROWS, GAN_MAX_STEPS and the queue: one request fills the queue


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bundled fashion-cgan (with its encoder) behind a queue of 64 rows; dataset jobs under a temp dir."""
    root = tmp_path_factory.mktemp("client")
    shutil.copytree(ROOT / "models" / MODEL, root / "models" / MODEL)
    env = {"GAN_MODEL_DIR": str(root / "models"), "GAN_DATA_DIR": str(root / "data")}
    env |= {f"GAN_{name}": str(ROWS) for name in ("MAX_QUEUE_ROWS", "MAX_N", "MAX_PAGE_ROWS", "MAX_STEPS")}
    with running_service(env) as (url, _):
        yield url


@pytest.fixture
def client(service: str) -> Iterator[Client]:
    with Client(service) as c:
        yield c


def rejections(url: str) -> float:
    """gan_rejections_total{reason="queue_full"}, summed over models: the 429s the service answered."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("gan_rejections_total{") and 'reason="queue_full"' in line)  # fmt: skip


# --- typed calls ------------------------------------------------------------------------------------------


def test_models_and_samples_with_their_provenance(client: Client) -> None:
    (info,) = client.models()
    assert info.name == MODEL and info.default_version == 4 and info.class_names[3] == "Dress"
    assert info.versions[0].can_edit and client.model(MODEL).versions[0].status == "ready"
    npy = client.generate(MODEL, 4, seed=7, offset=2, labels="Dress")
    assert npy.x is not None and npy.x.shape == (4, 28, 28, 1) and npy.x.dtype == np.uint8
    assert (npy.model, npy.version, npy.seed, npy.indices) == (MODEL, 4, 7, [2, 3, 4, 5])
    assert (
        info.versions[0].manifest is not None and npy.onnx_sha256 == info.versions[0].manifest["onnx_sha256"]
    )
    png = client.generate(MODEL, 4, seed=7, offset=2, labels="Dress", format="png")
    assert png.images is not None and all(i.startswith(b"\x89PNG") for i in png.images)
    assert png.labels == [3] * 4 and png.indices == npy.indices
    unseeded = client.generate(MODEL, 2)
    assert unseeded.seed is not None  # the service's choice, returned
    path = client.interpolate(MODEL, {"seed": 1, "label": "Sneaker"}, {"seed": 2, "label": 9}, steps=5)
    assert path.x is not None and path.x.shape == (5, 28, 28, 1)
    as_json = client.interpolate(
        MODEL, {"seed": 1, "label": 7}, {"seed": 2, "label": 9}, steps=5, format="json"
    )
    assert as_json.t == [0.0, 0.25, 0.5, 0.75, 1.0] and as_json.data is not None and len(as_json.data) == 5


def test_augment_pages_are_the_set_cut_anywhere(client: Client) -> None:
    spec: dict[str, Any] = {"class_counts": [60, 50, 60, 60, 60, 60, 60, 60, 60, 45], "target": "balance"}
    whole = client.augment(MODEL, seed=3, **spec)  # 25 rows: one page
    assert whole.total_rows == 25 and whole.class_names is not None and whole.class_names[1] == "Trouser"
    assert whole.labels == [1] * 10 + [9] * 15 and whole.indices == list(range(25))
    pages = list(client.augment_pages(MODEL, page_rows=7, seed=3, **spec))
    assert [len(p) for p in pages] == [7, 7, 7, 4]
    assert whole.x is not None and np.array_equal(whole.x, np.concatenate([p.x for p in pages]))
    unseeded = list(client.augment_pages(MODEL, page_rows=10, per_class={"Bag": 12}))
    assert len({p.seed for p in unseeded}) == 1 and sum(len(p) for p in unseeded) == 12  # one set, not two


def test_edit_json_and_multipart_give_the_same_samples(client: Client) -> None:
    source = client.generate(MODEL, 2, seed=5, labels="Shirt", format="png")
    assert source.images is not None
    edits = [
        client.edit(MODEL, source.images, edit={"label": "Dress"}, labels="Shirt", upload=upload)
        for upload in ("json", "multipart")
    ]
    assert (
        edits[0].content == edits[1].content and edits[0].x is not None and edits[0].x.shape == (2, 28, 28, 1)
    )
    assert edits[0].encoder_sha256 and edits[0].edit == {"operation": "label"}
    latents = client.edit(MODEL, source.images, return_latents=True, format="json")
    assert latents.latents is not None and len(latents.latents[0]) == 100
    with pytest.raises(ApiError) as refused:
        client.edit(MODEL, [b"not an image"])
    assert refused.value.status == 422 and refused.value.field == "images[0]"


def test_errors_carry_detail_and_field(client: Client) -> None:
    with pytest.raises(ApiError) as too_many:
        client.generate(MODEL, ROWS + 1, seed=1)
    assert (too_many.value.status, too_many.value.field) == (
        422,
        "n",
    ) and "GAN_MAX_N" in too_many.value.detail
    with pytest.raises(ApiError) as unknown:
        client.generate("nope", seed=1)
    assert unknown.value.status == 404 and unknown.value.field == "model"


# --- retries against a service that sheds load ------------------------------------------------------------

CALLS: dict[str, Callable[[Client], Samples]] = {
    **{f"generate {s}": (lambda c, s=s: c.generate(MODEL, ROWS, seed=s)) for s in range(3)},  # type: ignore[misc]
    "augment 0": lambda c: c.augment(MODEL, per_class={"0": 64, "7": 64}, seed=5, offset=0, limit=ROWS),
    "augment 64": lambda c: c.augment(MODEL, per_class={"0": 64, "7": 64}, seed=5, offset=64, limit=ROWS),
    "interpolate": lambda c: c.interpolate(
        MODEL, {"seed": 1, "label": 0}, {"seed": 2, "label": 5}, steps=ROWS
    ),
}


def identity(samples: Samples) -> tuple[Any, ...]:
    """What must not change under load: the samples' bytes, indices, classes and provenance."""
    assert samples.x is not None
    y = samples.y.tobytes() if samples.y is not None else None
    return samples.x.tobytes(), y, samples.indices, samples.seed, samples.version, samples.onnx_sha256


def test_every_call_succeeds_through_429s_with_the_bytes_of_an_unloaded_call(service: str) -> None:
    """Eight threads send every call at once, in their own orders, through one client: the 64-row queue holds one
    request, so most are refused with 429 and Retry-After. Each refusal is waited out and retried (the
    service's count of 429s is the client's count of retries) and every answer is the unloaded one."""
    with Client(service) as quiet:
        expected = {name: identity(call(quiet)) for name, call in CALLS.items()}
    sleeps: list[float] = []
    lock = threading.Lock()
    wake = threading.Event()

    def sleep(seconds: float) -> None:
        with lock:
            sleeps.append(seconds)
        wake.wait(seconds)  # a real wait: the service's queue must drain

    retrier = Retrier(RetryPolicy(max_attempts=100, max_total_s=300), sleep=sleep)
    before = rejections(service)
    results: list[tuple[str, tuple[Any, ...]]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(number: int) -> None:
        names = list(CALLS)
        random.Random(number).shuffle(names)
        start.wait()
        try:
            for name in names:
                outcome = identity(CALLS[name](loaded))
                with lock:
                    results.append((name, outcome))
        except BaseException as error:
            errors.append(error)

    with Client(service, retrier=retrier) as loaded:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert Counter(name for name, _ in results) == {name: 8 for name in CALLS}
    assert all(outcome == expected[name] for name, outcome in results)
    refused = rejections(service) - before
    print(f"{len(results)} calls, {refused:.0f} answered 429, waits {min(sleeps):.2f}..{max(sleeps):.2f} s")
    assert refused > 0 and len(sleeps) == refused
    assert min(sleeps) >= 1.0  # never sooner than the service's Retry-After (at least 1 s)


# --- dataset jobs -----------------------------------------------------------------------------------------


def test_a_dataset_job_is_created_waited_for_and_downloaded_verified(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan: dict[str, Any] = {"per_class": {"Sandal": 9, "Bag": 8}, "seed": 21}
    created = client.create_dataset(MODEL, shard_rows=5, format="npz", **plan)
    assert created.state in ("running", "done") and created.rows_total == 17 and created.shards_total == 4
    done = client.wait(created, poll_s=0.05, timeout_s=120)
    assert done.state == "done" and done.rows_done == 17 and done.shards_done == 4
    assert "dataset" in capsys.readouterr().err  # the progress bar went to stderr
    paths = client.download(done, tmp_path / "set")
    assert [p.name for p in paths] == [f"shard-{k:05d}.npz" for k in range(4)]
    assert done.shards is not None
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths] == [s.sha256 for s in done.shards]
    # The shards hold /augment's rows for the same plan and seed.
    page = client.augment(MODEL, **plan)
    arrays = []
    for path in paths:
        with np.load(path) as npz:
            arrays.append({name: npz[name] for name in npz.files})
    assert page.x is not None and np.array_equal(np.concatenate([a["x"] for a in arrays]), page.x)
    assert np.concatenate([a["index"] for a in arrays]).tolist() == page.indices
    # A second download keeps the verified files; listing, metadata and deletion.
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert client.download(done.id, tmp_path / "set") == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    assert done.id in [j.id for j in client.datasets()]
    metadata = client.metadata(done)
    assert "croissant" in str(metadata.get("conformsTo", "")).lower()
    client.delete_dataset(done)
    with pytest.raises(ApiError) as gone:
        client.dataset(done.id)
    assert gone.value.status == 404


# webdataset leaves its tar files for the garbage collector to close
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_readme_recipe_job_download_webdataset_and_parquet(client: Client, tmp_path: Path) -> None:
    """Shards downloaded by the client load as the README says: webdataset tars and parquet files."""
    wds = pytest.importorskip("webdataset")
    pq = pytest.importorskip("pyarrow.parquet")
    plan: dict[str, Any] = {"per_class": {"Coat": 4, "Bag": 2}, "seed": 2, "shard_rows": 4}
    tars = client.download(
        client.wait(client.create_dataset(MODEL, **plan), poll_s=0.05, progress=False), tmp_path / "wds"
    )
    rows = list(
        wds.WebDataset([str(p) for p in tars], shardshuffle=False)
        .decode("pil")
        .to_tuple("png", "cls", "json")
    )
    assert [(image.size, label, meta["index"]) for image, label, meta in rows] == [
        ((28, 28), label, index) for index, label in enumerate([4, 4, 4, 4, 8, 8])
    ]
    job = client.wait(client.create_dataset(MODEL, format="parquet", **plan), poll_s=0.05, progress=False)
    table = pq.ParquetDataset([str(p) for p in client.download(job, tmp_path / "parquet")]).read()
    assert table.column("label").to_pylist() == [4, 4, 4, 4, 8, 8]
    assert all(png.startswith(b"\x89PNG") for png in table.column("image").to_pylist())
    client.delete_dataset(job)


# --- the torch IterableDataset ----------------------------------------------------------------------------


def test_the_iterable_dataset_yields_the_same_rows_for_any_number_of_workers(service: str) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from gan_client.torch_data import AugmentDataset, to_float_chw

    dataset = AugmentDataset(service, MODEL, seed=11, page_rows=4, per_class={"Pullover": 5, "Ankle boot": 6})
    assert len(dataset) == 11 and dataset.pages == 3 and dataset.version == 4

    def rows(workers: int) -> list[tuple[int, bytes, int]]:
        loader = DataLoader(dataset, batch_size=None, num_workers=workers)
        return [(int(r["index"]), r["x"].numpy().tobytes(), int(r["y"])) for r in loader]

    alone = rows(0)
    assert [index for index, _, _ in alone] == list(range(11))  # one process: the set in row order
    with Client(service) as c:
        page = c.augment(MODEL, seed=11, per_class={"Pullover": 5, "Ankle boot": 6})
    assert page.x is not None and page.labels is not None
    assert alone == [(i, page.x[i].tobytes(), page.labels[i]) for i in range(11)]
    for workers in (1, 2):
        assert Counter(rows(workers)) == Counter(alone), workers
    batch = next(iter(DataLoader(AugmentDataset(service, MODEL, seed=11, page_rows=4, per_class={"Bag": 3}, transform=to_float_chw), batch_size=3)))  # fmt: skip
    assert batch["x"].shape == (3, 1, 28, 28) and batch["x"].dtype == torch.float32
    assert float(batch["x"].min()) >= -1.0 and float(batch["x"].max()) <= 1.0
