"""Turning generator output into bytes: uint8 images, PNG (with its provenance in the file), .npy and .npz."""

from __future__ import annotations

import base64
import functools
import importlib.metadata
import io
import struct
import zlib
from collections.abc import Mapping, Sequence

import deflate
import numpy as np


def to_uint8_nhwc(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8, rounding to the nearest level."""
    # In place on one temporary, with ufuncs: np.clip's Python wrapper alone costs more than a small image.
    y = np.maximum(x, -1.0, dtype=np.float32)
    np.minimum(y, 1.0, out=y)
    y += 1.0
    y *= 127.5
    np.rint(y, out=y)
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1)).astype(np.uint8)


def _software() -> str:
    try:
        return f"gan-serving {importlib.metadata.version('gan-serving')}"
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "gan-serving"


# Provenance in the PNG itself, so it stays with a file copied out of a data set: tEXt chunks (PNG's standard
# `Software`, then `gan:*` keys) and an XMP packet (iTXt, keyword XML:com.adobe.xmp) marking the image as
# machine-generated with the IPTC digital source type. No timestamps: the same sample gives the same bytes.
SOFTWARE = _software()
XMP_KEYWORD = "XML:com.adobe.xmp"
IPTC_EXT_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP_PACKET = (  # read-only (end="r"), uncompressed, in the iTXt chunk right after IHDR, as XMP Part 3 asks
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="{IPTC_EXT_NS}" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
    f' Iptc4xmpExt:DigitalSourceType="{TRAINED_ALGORITHMIC_MEDIA}" xmp:CreatorTool="{SOFTWARE}"/>'
    '</rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
)
_XMP_ITXT = XMP_KEYWORD.encode("latin-1") + b"\0\0\0\0\0" + XMP_PACKET.encode("utf-8")  # no language, no tkey


def sample_provenance(
    model: str,
    version: int,
    onnx_sha256: str,
    index: int,
    seed: int | None = None,
    label: int | None = None,
    class_name: str | None = None,
    **more: str,
) -> dict[str, str]:
    """The `gan:*` text of one sample: which graph made it, from which (seed, index), of which class.

    `more`: further keys, written as `gan:<key>` (/edit: `encoder_sha256`, `edit`); None values are left out.
    """
    text = {"gan:model": model, "gan:version": str(version), "gan:onnx_sha256": onnx_sha256}
    if seed is not None:
        text["gan:seed"] = str(seed)
    text["gan:index"] = str(index)
    if label is not None:
        text["gan:label"] = str(label)
    if class_name is not None:
        text["gan:class_name"] = class_name
    return text | {f"gan:{key}": value for key, value in more.items()}


def _chunk(kind: bytes, data: bytes | bytearray) -> bytes:  # libdeflate answers a bytearray
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


# Cached: a job's rows share all their text but the index (model, version, sha256, seed, class).
@functools.lru_cache(maxsize=4096)
def _text_chunk(key: str, value: str) -> bytes:
    """tEXt where the value is Latin-1 (as PIL's PngInfo.add_text writes it), else uncompressed iTXt."""
    keyword = key.encode("latin-1")
    try:
        return _chunk(b"tEXt", keyword + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", keyword + b"\0\0\0\0\0" + value.encode("utf-8"))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# libdeflate (the `deflate` package), level 1: a 28 x 28 image in about half zlib's time (zlib's cost for so
# small an input is mostly building its Huffman trees), 2 % larger; its output depends only on its version,
# which the wheel pins (ebiggers/libdeflate#400; its compressor's per-CPU code only fills tables and computes
# checksums, with the same results), so every machine writes the same bytes.
PNG_COMPRESS_LEVEL = 1
_IEND = _chunk(b"IEND", b"")
_XMP_CHUNK = _chunk(b"iTXt", _XMP_ITXT)


def provenance_chunks(provenance: Mapping[str, str]) -> bytes:
    """The chunks `png_bytes` writes before IDAT for `provenance`: the XMP packet, `Software` (unless given),
    then the provenance in its order."""
    return _XMP_CHUNK + text_chunks({"Software": SOFTWARE} | dict(provenance))


def text_chunks(text: Mapping[str, str]) -> bytes:
    """These keys and values as text chunks, in their order (each cached: a job's rows share them)."""
    return b"".join(_text_chunk(k, v) for k, v in text.items())


def text_chunk(key: str, value: str) -> bytes:
    """One text chunk, uncached: for a value that changes from row to row."""
    return _text_chunk.__wrapped__(key, value)


def png_bytes(image: np.ndarray, provenance: Mapping[str, str] | None = None) -> bytes:
    """One (H, W, C) uint8 image as an 8-bit PNG; grey for C = 1, RGB for C = 3.

    With `provenance` (e.g. `sample_provenance(...)`; an empty mapping writes only `Software` and the XMP),
    the XMP packet right after IHDR, then `Software` (unless given) and the provenance in its order, all before
    IDAT; None: a bare PNG. The pixels are the same either way.

    Written here rather than through PIL: for the small images a generator makes, PIL's per-call overhead and
    its adaptive row filters cost 3-4x the whole file (bench/png_provenance.py measures both). Every row uses
    filter 0 (none) and one zlib stream; any PNG reader decodes it (tests read it back with PIL).
    """
    return png_with_chunks(image, None if provenance is None else provenance_chunks(provenance))


def png_with_chunks(image: np.ndarray, chunks: bytes | None) -> bytes:
    """`png_bytes` with its text chunks already encoded (`provenance_chunks`)."""
    return pngs_with_chunks(image[None], [chunks])[0]


def pngs_with_chunks(images: np.ndarray, chunks: Sequence[bytes | None]) -> list[bytes]:
    """`png_with_chunks` of each (H, W, C) image of `images` with its chunks: a data set's shard encodes its
    rows at once (their scanlines in one array), and shares all its text chunks but one (service.datasets)."""
    count, height, width, channels = images.shape
    if channels not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(f"png_bytes takes (H, W, 1 or 3) uint8, got {images.shape[1:]} {images.dtype}")
    rows = np.zeros((count, height, width * channels + 1), dtype=np.uint8)  # a leading 0 a row: filter "none"
    rows[:, :, 1:] = images.reshape(count, height, width * channels)
    head, idat_crc = PNG_SIGNATURE + _ihdr(width, height, channels), zlib.crc32(b"IDAT")
    pack = struct.Struct(">I").pack
    out = []
    for row, extra in zip(rows, chunks, strict=True):
        data = deflate.zlib_compress(row, PNG_COMPRESS_LEVEL)
        idat = b"".join((pack(len(data)), b"IDAT", data, pack(zlib.crc32(data, idat_crc))))
        out.append(b"".join((head, extra or b"", idat, _IEND)))
    return out


@functools.lru_cache(maxsize=64)
def _ihdr(width: int, height: int, channels: int) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0 if channels == 1 else 2, 0, 0, 0))


def png_base64(images: np.ndarray, provenance: Sequence[Mapping[str, str]] | None = None) -> list[str]:
    """Base64 PNGs of (N, H, W, C) uint8 images; `provenance`: one mapping per image, or None for bare PNGs."""
    if provenance is None:
        return [base64.b64encode(png_bytes(image)).decode("ascii") for image in images]
    return [
        base64.b64encode(png_bytes(image, text)).decode("ascii")
        for image, text in zip(images, provenance, strict=True)
    ]


@functools.lru_cache(maxsize=256)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """.npy (format 1.0) of a C-contiguous array: a cached header plus the raw bytes."""
    array = np.ascontiguousarray(array)
    return _npy_header(array.dtype.str, array.shape) + array.tobytes()  # plain dtypes: descr == dtype.str


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # uncompressed: generated images compress poorly and zlib costs CPU per row
    return buffer.getvalue()
