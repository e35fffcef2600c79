"""Shard bytes and how they reach the disk: deterministic encoders, and atomic writes.

A shard's bytes are a pure function of its rows: no timestamps, owners or library defaults that vary between
runs. webdataset: a POSIX tar as `tarfile` writes it with mtime 0, uid/gid 0, no user names, mode 0644
(service.datasets.tar; webdataset's TarWriter stamps the current time); parquet: pyarrow with its settings fixed
here; npz: a stored zip with a fixed 1980-01-01 date on every member (numpy's savez stamps the current time).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service import encoding
from service.datasets.spec import Format, JobSpec
from service.datasets.tar import tar_bytes
from service.files import atomic_write_bytes, fsync_folder, temporary_beside
from service.manifest import Manifest
from service.plans import Plan

EXTENSIONS: dict[str, str] = {"webdataset": ".tar", "parquet": ".parquet", "npz": ".npz"}
MEDIA_TYPES: dict[str, str] = {
    "webdataset": "application/x-tar",
    "parquet": "application/vnd.apache.parquet",
    "npz": "application/octet-stream",
}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold


def shard_name(k: int, fmt: str) -> str:
    return f"shard-{k:05d}{EXTENSIONS[fmt]}"


def sample_key(index: int) -> str:
    """A sample's key inside a webdataset shard: its index in the set, zero-padded so keys sort as numbers."""
    return f"{index:010d}"


@dataclass(frozen=True)
class Identity:
    """What every sample of a job shares: the graph that made it and how its rows are drawn."""

    model: str
    version: int
    onnx_sha256: str
    seed: int
    truncation: float | None
    kind: str  # image | vector
    class_names: tuple[str, ...]
    png_provenance: bool

    @classmethod
    def of(cls, spec: JobSpec, manifest: Manifest) -> Identity:
        return cls(
            manifest.name, manifest.version, manifest.onnx_sha256, spec.seed, spec.truncation,
            manifest.kind, tuple(manifest.class_names) if manifest.num_classes else (), spec.png_provenance,
        )  # fmt: skip


def served(x: np.ndarray, kind: str) -> np.ndarray:
    """What shards hold: uint8 NHWC images or float32 vectors (as /augment's npz)."""
    return encoding.to_uint8_nhwc(x) if kind == "image" else np.ascontiguousarray(x, dtype=np.float32)


def encode_shard(fmt: Format, identity: Identity, plan: Plan, values: np.ndarray) -> bytes:
    """The bytes of one shard: the plan's rows (index, class) with their generator output as `served` makes it."""
    labels = plan.labels.tolist() if plan.labels is not None else [None] * plan.rows
    if fmt == "npz":
        return npz_shard(identity, plan, values)
    if identity.kind == "image":
        items = pngs(identity, values, plan.indices, labels)
    else:
        items = [encoding.npy_bytes(row) for row in values]
    if fmt == "webdataset":
        return webdataset_shard(identity, plan.indices, labels, items)
    return parquet_shard(identity, plan.indices, labels, items, values)


def encode_to_temporary(
    fmt: Format, identity: Identity, plan: Plan, values: np.ndarray, path: Path
) -> tuple[str, int, str]:
    """What a job's worker process does with a shard: encode it, and write it beside `path` as a temporary file
    (fsynced, never listed); returns (that file, its bytes, their sha256). The job renames it to `path` once the
    disk budget allows (`publish`): a shard's bytes never cross the pipe to the service."""
    data = encode_shard(fmt, identity, plan, values)
    return temporary_beside(path, data), len(data), hashlib.sha256(data).hexdigest()


def png(identity: Identity, image: np.ndarray, index: int, label: int | None) -> bytes:
    """One sample's PNG, with its provenance in text chunks when the job asks for it (service.encoding):
    `encoding.png_bytes(image, sample_provenance(...))`, byte for byte (a test compares the two)."""
    return pngs(identity, image[None], [index], [label])[0]


def pngs(identity: Identity, images: np.ndarray, indices: list[int], labels: list[int | None]) -> list[bytes]:
    """`png` of each row: the provenance chunks around `gan:index` looked up once a class, the PNGs at once."""
    if not identity.png_provenance:
        return encoding.pngs_with_chunks(images, [None] * len(indices))
    around = {label: _chunks_around_index(identity, label) for label in set(labels)}
    index_chunk = encoding.text_chunk
    chunks = [
        b"".join((around[label][0], index_chunk("gan:index", str(index)), around[label][1]))
        for index, label in zip(indices, labels, strict=True)
    ]
    return encoding.pngs_with_chunks(images, chunks)


@functools.lru_cache(maxsize=1024)
def _chunks_around_index(identity: Identity, label: int | None) -> tuple[bytes, bytes]:
    """The provenance chunks before and after `gan:index`, the only one that changes from row to row."""
    name = identity.class_names[label] if label is not None else None
    text = encoding.sample_provenance(
        identity.model, identity.version, identity.onnx_sha256, -1, identity.seed, label, name
    )
    keys = list(text)
    at = keys.index("gan:index")
    before = encoding.provenance_chunks({k: text[k] for k in keys[:at]})
    return before, encoding.text_chunks({k: text[k] for k in keys[at + 1 :]})


def sample_json(identity: Identity, index: int, label: int | None) -> bytes:
    """The sample's record as `json.dumps(..., sort_keys=True, separators=(",", ":"))` writes it."""
    before, after = _json_around_index(identity, label)
    return b"%s%d%s" % (before, index, after)


@functools.lru_cache(maxsize=1024)
def _json_around_index(identity: Identity, label: int | None) -> tuple[bytes, bytes]:
    """The record's bytes before and after its index, which is the only field that changes from row to row:
    a key at the top level, so `"index":-1` cannot occur elsewhere (quotes inside strings are escaped)."""
    record: dict[str, Any] = {
        "index": -1, "seed": identity.seed, "model": identity.model, "version": identity.version,
        "onnx_sha256": identity.onnx_sha256, "truncation": identity.truncation,
    }  # fmt: skip
    if label is not None:
        record |= {"label": label, "class_name": identity.class_names[label]}
    text = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    before, after = text.split(b'"index":-1')
    return before + b'"index":', after


def webdataset_shard(
    identity: Identity, indices: list[int], labels: list[int | None], items: list[bytes]
) -> bytes:
    """KEY.png (KEY.npy for vectors), KEY.cls (conditional models), KEY.json, sample after sample."""
    ext = "png" if identity.kind == "image" else "npy"
    members: list[tuple[str, bytes]] = []
    for index, label, item in zip(indices, labels, items, strict=True):
        key = sample_key(index)
        members.append((f"{key}.{ext}", item))
        if label is not None:
            members.append((f"{key}.cls", str(label).encode()))
        members.append((f"{key}.json", sample_json(identity, index, label)))
    return tar_bytes(members)


def parquet_shard(
    identity: Identity, indices: list[int], labels: list[int | None], items: list[bytes], values: np.ndarray
) -> bytes:
    """Columns image (PNG bytes; x, float32 lists, for vector models), label and class_name (conditional models),
    seed, index: one row group.

    The columns are built from buffers, never from Python objects: pyarrow's first conversion of Python objects
    (or numpy arrays) imports pandas, when installed, about a second of CPU in every worker; the bytes are the
    same (tests/test_shard_bytes.py)."""
    import pyarrow as pa  # the service needs it only when it writes parquet
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {}
    if identity.kind == "image":
        columns["image"] = _variable(pa.binary(), items)
    else:
        flat = _fixed(pa.float32(), np.ascontiguousarray(values.reshape(-1), dtype=np.float32))
        columns["x"] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    if identity.class_names:
        columns["label"] = _fixed(pa.int64(), np.array(labels, dtype=np.int64))
        names = [identity.class_names[y].encode() for y in labels if y is not None]
        columns["class_name"] = _variable(pa.string(), names)
    columns["seed"] = _fixed(pa.int64(), np.full(len(indices), identity.seed, dtype=np.int64))
    columns["index"] = _fixed(pa.int64(), np.array(indices, dtype=np.int64))
    sink = pa.BufferOutputStream()
    pq.write_table(
        pa.Table.from_arrays(list(columns.values()), names=list(columns)), sink,
        row_group_size=max(1, len(indices)), compression="snappy",
        use_dictionary=False, write_statistics=True, version="2.6", data_page_version="1.0",
    )  # fmt: skip
    return bytes(sink.getvalue().to_pybytes())


def _fixed(kind: Any, values: np.ndarray) -> Any:
    """A pyarrow array of a fixed-width type over a contiguous numpy array of that type (no nulls)."""
    import pyarrow as pa

    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def _variable(kind: Any, items: list[bytes]) -> Any:
    """A pyarrow binary or (UTF-8) string array over these byte strings (no nulls): int32 offsets and the data."""
    import pyarrow as pa

    offsets = np.zeros(len(items) + 1, dtype=np.int32)
    np.cumsum([len(item) for item in items], out=offsets[1:])
    return pa.Array.from_buffers(
        kind, len(items), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(items))]
    )


def npz_shard(identity: Identity, plan: Plan, values: np.ndarray) -> bytes:
    """x, seed, index, and y and class_names for conditional models: /augment's npz arrays, dtypes and names."""
    arrays = {
        "x": values,
        "seed": np.array(identity.seed, dtype=np.uint64),
        "index": np.array(plan.indices, dtype=np.int64),
    }
    if plan.labels is not None:
        arrays |= {"y": plan.labels.astype(np.int64), "class_names": np.array(identity.class_names)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def estimated_row_bytes(manifest: Manifest, fmt: str, png_provenance: bool) -> int:
    """About how many bytes one row takes in a shard (the disk budget's check before a job starts)."""
    values = int(np.prod(manifest.output_shape))
    if manifest.kind == "image":
        height = manifest.output_shape[1] if len(manifest.output_shape) == 3 else 1
        item = values + height + 128 + (1024 if png_provenance else 0)  # PNG: pixels, filter bytes, chunks
        raw = values
    else:
        item = raw = 4 * values + 128  # .npy of float32
    if fmt == "webdataset":
        return item + 3 * 512 + 3 * 256 + 256  # three members: headers, padding, the JSON
    return (raw if fmt == "npz" else item) + 32


def write_shard(path: Path, data: bytes) -> None:
    """Temporary file in the same folder, fsync, rename, fsync the folder: the shard is whole or absent."""
    atomic_write_bytes(path, data)
    fsync_folder(path.parent)


def publish(temporary: str, path: Path) -> None:
    """The last steps of `write_shard` for a temporary file already written and fsynced (`temporary_beside`):
    rename it to `path`, fsync the folder."""
    os.replace(temporary, path)
    fsync_folder(path.parent)


def remove_partial(folder: Path) -> None:
    """Temporary files a killed writer left behind (never listed: a shard is listed once renamed)."""
    for tmp in folder.glob(".shard-*.tmp"):
        tmp.unlink(missing_ok=True)
