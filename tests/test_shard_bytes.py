"""The shard writers' hand-made bytes are the libraries' bytes: tar members as `tarfile` writes them, sample
records as `json.dumps` writes them (service/datasets/shards.py writes both itself, for speed), parquet
columns built from buffers as pyarrow builds them from Python objects (which would import pandas), and a
shard's PNG (its provenance chunks encoded once a job) as `encoding.png_bytes` writes any PNG."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service import encoding
from service.datasets.shards import Identity, parquet_shard, png, sample_json
from service.datasets.tar import header as tar_header
from service.datasets.tar import tar_bytes


def tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """What shards.tar_bytes did before: tarfile with mtime 0, uid/gid 0, no names, mode 0644."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("trial", range(12))
def test_tar_bytes_are_tarfiles_bytes(trial: int) -> None:
    rng = random.Random(trial)
    sizes = [0, 1, 511, 512, 513, 1024, 10240, rng.randrange(4000)]
    members = [
        (
            f"{rng.randrange(10**10):010d}.{rng.choice(['png', 'cls', 'json', 'npy'])}",
            rng.randbytes(rng.choice(sizes)),
        )
        for _ in range(rng.randrange(0, 25))
    ]
    data = tar_bytes(members)
    assert data == tarfile_bytes(members)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # and it reads back
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == members  # type: ignore[union-attr]


def test_a_name_too_long_for_a_plain_header_is_refused() -> None:
    with pytest.raises(ValueError, match="USTAR"):
        tar_header("x" * 101, 1)


@pytest.mark.parametrize("label", [None, 0, 1, 3])
@pytest.mark.parametrize("truncation", [None, 0.7])
def test_sample_json_is_json_dumps(label: int | None, truncation: float | None) -> None:
    names = ("T-shirt", 'quote " and \\ "index":-1', "Dress", "猫")
    identity = Identity("m", 2, "ab" * 32, 2**40, truncation, "image", names, True)
    for index in (0, 7, 10**12):
        record = {
            "index": index, "seed": 2**40, "model": "m", "version": 2, "onnx_sha256": "ab" * 32,
            "truncation": truncation,
        }  # fmt: skip
        if label is not None:
            record |= {"label": label, "class_name": names[label]}
        expected = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        assert sample_json(identity, index, label) == expected


@pytest.mark.parametrize("label", [None, 0, 2])
@pytest.mark.parametrize("provenance", [True, False])
def test_a_shards_png_is_png_bytes_with_the_samples_provenance(label: int | None, provenance: bool) -> None:
    names = ("T-shirt", "Trouser", "猫")  # not Latin-1: an iTXt chunk
    identity = Identity("m", 2, "ab" * 32, 2**40, None, "image", names, provenance)
    rng = np.random.default_rng(label)
    image = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    for index in (0, 7, 10**12):
        text = encoding.sample_provenance(
            "m", 2, "ab" * 32, index, 2**40, label, None if label is None else names[label]
        )
        expected = encoding.png_bytes(image, text if provenance else None)
        assert png(identity, image, index, label) == expected


def pyarrow_parquet(identity: Identity, indices: list[int], labels: list[int | None], items: list[bytes],
                    values: np.ndarray) -> bytes:  # fmt: skip
    """What shards.parquet_shard did before: its columns from Python objects with pa.array."""
    columns: dict[str, pa.Array] = {}
    if identity.kind == "image":
        columns["image"] = pa.array(items, type=pa.binary())
    else:
        columns["x"] = pa.FixedSizeListArray.from_arrays(
            pa.array(values.reshape(-1), type=pa.float32()), values.shape[1]
        )
    if identity.class_names:
        columns["label"] = pa.array(labels, type=pa.int64())
        columns["class_name"] = pa.array([identity.class_names[y] for y in labels if y is not None])
    columns["seed"] = pa.array([identity.seed] * len(indices), type=pa.int64())
    columns["index"] = pa.array(indices, type=pa.int64())
    sink = pa.BufferOutputStream()
    pq.write_table(
        pa.table(columns), sink, row_group_size=max(1, len(indices)), compression="snappy",
        use_dictionary=False, write_statistics=True, version="2.6", data_page_version="1.0",
    )  # fmt: skip
    return bytes(sink.getvalue().to_pybytes())


@pytest.mark.parametrize("kind", ["image", "vector"])
@pytest.mark.parametrize("conditional", [True, False])
def test_parquet_from_buffers_is_pyarrows_parquet(kind: str, conditional: bool) -> None:
    rng = random.Random(f"{kind}{conditional}")
    rows = rng.randint(1, 40)
    names = ("T-shirt/top", "Trouser", "Ankle boot", "Zoë") if conditional else ()
    identity = Identity("m", 3, "ab" * 32, rng.randint(0, 2**40), None, kind, names, True)
    indices = sorted(rng.sample(range(10**6), rows))
    labels = [rng.randrange(len(names)) for _ in indices] if conditional else [None] * rows
    items = [rng.randbytes(rng.randint(0, 300)) for _ in indices]
    values = np.random.default_rng(rows).standard_normal((rows, 5)).astype(np.float32)
    assert parquet_shard(identity, indices, labels, items, values) == pyarrow_parquet(
        identity, indices, labels, items, values
    )


def test_a_parquet_shard_does_not_import_pandas() -> None:
    """What made a worker's first parquet shard cost about a second (pandas is installed here: the test means it)."""
    assert importlib.util.find_spec("pandas") is not None  # pyarrow would import it
    code = (
        "import sys\n"
        "import numpy as np; from service.datasets.shards import Identity, parquet_shard\n"
        "i = Identity('m', 1, 'ab' * 32, 1, None, 'image', ('a', 'b'), True)\n"
        "parquet_shard(i, [0, 1], [0, 1], [b'x', b'yz'], np.zeros((2, 1), np.float32))\n"
        "print('pandas' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False", found.stderr
