"""POSIX tar bytes, as `tarfile` writes them with a fixed owner, mode and mtime, for webdataset shards.

Written here because tarfile's per-member Python cost was most of a webdataset shard's CPU (about 3x the PNG it
holds): every member's header is the same USTAR header but for its name, size and checksum, so a shard's
headers are one numpy array, filled a field at a time for all its members. tests/test_shard_bytes.py checks the
bytes are tarfile's.
"""

from __future__ import annotations

import functools
import tarfile
from collections.abc import Sequence

import numpy as np

BLOCK, RECORD = 512, 10240  # tarfile's BLOCKSIZE and RECORDSIZE
NAME, CHECKSUM = slice(0, 100), slice(148, 156)  # USTAR fields a member changes (and its size, 124:136)
_PADDING = [bytes(n) for n in range(BLOCK)]


@functools.cache
def _template() -> np.ndarray:
    """tarfile's own USTAR header for a member named "" of size 0: mtime 0, mode 0644, owner 0/0, no names."""
    info = tarfile.TarInfo("")
    info.size, info.mtime, info.mode = 0, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    header = np.frombuffer(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"), dtype=np.uint8)
    header = header.copy()
    header[CHECKSUM] = ord(" ")  # as the checksum counts its own field
    return header


def _octal(values: np.ndarray, digits: int) -> np.ndarray:
    """(N, digits) ASCII octal digits of each value, zero-padded ("%0<digits>o")."""
    shifts = 3 * np.arange(digits - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] >> shifts) & 7).astype(np.uint8) + ord("0")


def headers(names: Sequence[bytes], sizes: np.ndarray) -> np.ndarray:
    """(N, 512) uint8: each member's header, as tarfile writes it (name, size "%011o\\0", checksum "%06o\\0 ")."""
    for name, size in zip(names, sizes.tolist(), strict=True):
        if len(name) > 100 or size >= 8**11:  # tarfile would split the name into a prefix: not needed here
            raise ValueError(f"tar member {name!r} ({size} bytes) needs more than a plain USTAR header")
    out = np.tile(_template(), (len(names), 1))
    if not len(names):
        return out
    padded = b"".join(name.ljust(100, b"\0") for name in names)
    out[:, NAME] = np.frombuffer(padded, np.uint8).reshape(-1, 100)
    out[:, 124:135], out[:, 135] = _octal(sizes, 11), 0
    checksums = out.sum(axis=1, dtype=np.int64)
    out[:, 148:154], out[:, 154], out[:, 155] = _octal(checksums, 6), 0, ord(" ")
    return out


def header(name: str, size: int) -> bytes:
    """One member's header (see `headers`)."""
    return headers([name.encode("utf-8")], np.array([size], dtype=np.int64)).tobytes()


def tar_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A POSIX tar of these members, byte for byte what `tarfile` writes with the fixed owner, mode and mtime
    above."""
    sizes = np.array([len(data) for _, data in members], dtype=np.int64)
    block = memoryview(headers([name.encode("utf-8") for name, _ in members], sizes).tobytes())
    parts: list[bytes | memoryview] = []
    offset = 0
    for at, ((_, data), size) in enumerate(zip(members, sizes.tolist(), strict=True)):
        padding = -size % BLOCK
        parts += [block[at * BLOCK : (at + 1) * BLOCK], data, _PADDING[padding]]
        offset += BLOCK + size + padding
    offset += 2 * BLOCK  # the end-of-archive marker, then zeros up to a whole record
    parts.append(bytes(2 * BLOCK + (-offset % RECORD)))
    return b"".join(parts)
