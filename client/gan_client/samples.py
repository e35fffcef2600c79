"""The service's answers as typed values: samples with their provenance, and the models that make them.

Binary formats (`npy`, `npz`) are decoded to numpy arrays; numpy is imported only then (the `numpy` extra).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import httpx

if TYPE_CHECKING:
    from numpy.typing import NDArray

Format = Literal["png", "json", "npy", "npz"]


@dataclass(frozen=True)
class Samples:
    """One answer of /generate, /interpolate, /augment or /edit, and its provenance.

    A sample's identity is (model, version, onnx_sha256, seed, index): the same identity, the same bytes.
    `x` holds the arrays of the binary formats: uint8 NHWC images or float32 `(N, D)` vectors; `y` the
    classes of an /augment page (npz). `images` holds the PNG files of format png, `data` the flattened
    values of format json (the generator's output in [-1, 1], NCHW order) and of vector models.
    """

    model: str
    version: int
    onnx_sha256: str
    provider: str
    seed: int | None
    indices: list[int]
    format: Format
    x: NDArray[Any] | None = None
    y: NDArray[Any] | None = None
    images: list[bytes] | None = None
    data: list[list[float]] | None = None
    shape: list[int] | None = None  # one sample: [C, H, W] or [D] (JSON formats)
    labels: list[int] | None = None
    class_names: list[str] | None = None
    total_rows: int | None = None  # /augment: the size of the whole set this page belongs to
    truncation: float | None = None
    t: list[float] | None = None  # /interpolate: each point's position on the path
    encoder_sha256: str | None = None  # /edit
    edit: dict[str, Any] | None = None  # /edit: the operation applied
    latents: list[list[float]] | None = None  # /edit with return_latents
    content: bytes = field(default=b"", repr=False)  # the body as the service sent it

    def __len__(self) -> int:
        return len(self.indices)


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise ImportError("decoding npy/npz answers needs numpy: pip install 'gan-client[numpy]'") from None
    return numpy


def _int_header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name)
    return int(value) if value is not None else None


def parse_samples(response: httpx.Response, fmt: Format) -> Samples:
    """The answer of a sample route in format `fmt` (the provenance of binary formats is in X-* headers)."""
    headers = response.headers
    total_rows = _int_header(response, "x-total-rows")
    if fmt in ("png", "json"):
        body: dict[str, Any] = response.json()
        return Samples(
            model=body["model"], version=body["version"], onnx_sha256=body["onnx_sha256"],
            provider=body["provider"], seed=body.get("seed"), indices=body["indices"], format=body["format"],
            images=[base64.b64decode(text) for text in body["images"]] if "images" in body else None,
            data=body.get("data"), shape=body.get("shape"), labels=body.get("labels"), total_rows=total_rows,
            truncation=body.get("truncation"), t=body.get("t"), encoder_sha256=body.get("encoder_sha256"),
            edit=body.get("edit"), latents=body.get("latents"), content=response.content,
        )  # fmt: skip
    np = _numpy()
    seed = _int_header(response, "x-seed")
    common: dict[str, Any] = {
        "model": headers["x-model"],
        "version": int(headers["x-model-version"]),
        "onnx_sha256": headers["x-onnx-sha256"],
        "provider": headers["x-provider"],
        "seed": seed,
        "format": fmt,
        "total_rows": total_rows,
        "encoder_sha256": headers.get("x-encoder-sha256"),
        "edit": {"operation": headers["x-edit"]} if "x-edit" in headers else None,
        "content": response.content,
    }
    if fmt == "npy":
        start, count = _int_header(response, "x-sample-start") or 0, _int_header(response, "x-sample-count")
        x = np.load(io.BytesIO(response.content), allow_pickle=False)
        indices = list(range(start, start + (count if count is not None else len(x))))
        return Samples(**common, indices=indices, x=x)
    with np.load(io.BytesIO(response.content), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    y = arrays.get("y")
    names = arrays.get("class_names")
    return Samples(
        **common,
        indices=[int(i) for i in arrays["index"]],
        x=arrays["x"],
        y=y,
        labels=[int(v) for v in y] if y is not None else None,
        class_names=[str(v) for v in names] if names is not None else None,
    )


@dataclass(frozen=True)
class ModelVersion:
    """One version of GET /models: ready (serving) or failed with the reason; `manifest` as the service has it."""

    version: int
    status: str
    reason: str | None
    default: bool
    provider: str | None
    can_edit: bool
    manifest: dict[str, Any] | None
    quality: dict[str, Any] | None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    default_version: int | None
    versions: list[ModelVersion]

    @property
    def class_names(self) -> list[str]:
        """The default version's classes ([] for unconditional models)."""
        for v in self.versions:
            if v.default and v.manifest:
                return list(v.manifest.get("class_names") or [])
        return []


def parse_version(v: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        version=v["version"],
        status=v["status"],
        reason=v.get("reason"),
        default=v.get("default", False),
        provider=v.get("provider"),
        can_edit=bool((v.get("editing") or {}).get("available")),
        manifest=v.get("manifest"),
        quality=v.get("quality"),
    )


def parse_model(body: dict[str, Any]) -> ModelInfo:
    versions = [parse_version(v) for v in body["versions"]]
    return ModelInfo(name=body["name"], default_version=body.get("default_version"), versions=versions)
