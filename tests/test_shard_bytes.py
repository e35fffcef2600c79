"""The shard writers' hand-made bytes are the libraries' bytes: tar members as `tarfile` writes them, sample
records as `json.dumps` writes them (service/datasets/shards.py writes both itself, for speed)."""

from __future__ import annotations

import io
import json
import random
import tarfile

import pytest

from service.datasets.shards import Identity, sample_json, tar_bytes, tar_header


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
