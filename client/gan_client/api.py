"""`Client`: typed calls for the service's endpoints, each sent under the retry policy (gan_client.retry)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, Unpack

import httpx

from gan_client.datasets import DatasetCalls
from gan_client.retry import Retrier, RetryPolicy
from gan_client.samples import Format, ModelInfo, Samples, parse_model, parse_samples

Label = int | str  # a class index or a class name
ImageFile = bytes | str | os.PathLike[str]  # PNG or JPEG bytes, or the path of one
SampleFormat = Literal["png", "npy", "json"]


class Endpoint(TypedDict, total=False):
    """One end of an /interpolate path: a `seed` or an explicit `z`, and the `label` of conditional models."""

    seed: int
    z: list[float]
    label: Label


class EditOperation(TypedDict, total=False):
    """One /edit operation: exactly one of label, direction (+ strength), mix_seed (+ t, method), truncation."""

    label: Label
    direction: str
    strength: float
    mix_seed: int
    t: float
    method: Literal["slerp", "lerp"]
    truncation: float


class Variations(TypedDict):
    """Labelled variations of real images (`/augment` `variations_of`): E(x) + sigma * eps."""

    images: Sequence[ImageFile]
    labels: NotRequired[Label | list[Label]]
    sigma: NotRequired[float]
    per_image: NotRequired[int]
    resize: NotRequired[bool]


class PlanSpec(TypedDict, total=False):
    """The plan of a synthetic labelled set of /augment: exactly one of per_class, class_counts (with target
    or ratio), n (unconditional models) or variations_of; and truncation."""

    per_class: Mapping[str, int]
    class_counts: Mapping[str, int] | Sequence[int]
    target: Literal["balance"]
    ratio: float
    n: int
    variations_of: Variations
    truncation: float


class SetSpec(PlanSpec, total=False):
    """A plan and its seed: one set, the same rows every time (without a seed the service picks one)."""

    seed: int


def image_bytes(image: ImageFile) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _b64(image: ImageFile) -> str:
    return base64.b64encode(image_bytes(image)).decode("ascii")


def set_body(spec: SetSpec) -> dict[str, Any]:
    """The JSON of a set's spec: mappings and sequences as JSON objects and lists, images as base64."""
    body: dict[str, Any] = {}
    for name, value in spec.items():
        if name == "variations_of":
            assert isinstance(value, dict)
            value = {**value, "images": [_b64(i) for i in value["images"]]}
        elif isinstance(value, Mapping):
            value = {str(k): v for k, v in value.items()}
        elif isinstance(value, Sequence) and not isinstance(value, str):
            value = list(value)
        body[name] = value
    return body


class Client(DatasetCalls):
    """The service at `base_url`. Thread-safe: one client may serve many threads (one connection pool).

    `api_key` goes in `Authorization: Bearer`. `retry` bounds the retries of every call; `transport`,
    `sleep`, `clock` and `uniform` (the jitter's draws) are for tests and custom stacks.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        retrier: Retrier | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )
        self.retrier = retrier or Retrier(retry or RetryPolicy())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> httpx.Response:
        """One call under the retry policy: the 2xx answer, or ApiError (httpx's errors for transport)."""
        return self.retrier.send(
            lambda: self.http.request(method, path, **kwargs), idempotent=idempotent, what=f"{method} {path}"
        )

    # --- models ---------------------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        """Every model with its versions: ready, or failed with the reason."""
        body = self.request("GET", "/models", idempotent=True).json()
        return [parse_model(m) for m in body["models"]]

    def model(self, name: str) -> ModelInfo:
        return parse_model(self.request("GET", f"/models/{name}", idempotent=True).json())

    def ready(self) -> bool:
        """Whether /readyz answers 200 (never retried: the answer is the point)."""
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    # --- samples --------------------------------------------------------------------------------------

    def generate(
        self,
        model: str,
        n: int = 1,
        *,
        seed: int | None = None,
        offset: int = 0,
        truncation: float | None = None,
        labels: Label | Sequence[Label] | None = None,
        version: int | None = None,
        format: SampleFormat = "npy",
    ) -> Samples:
        """Samples offset .. offset+n-1 of `seed` (without one the service picks it: see `.seed`).

        Only a seeded call is retried after a transport error: without a seed, a retry is another sample.
        """
        body: dict[str, Any] = {"model": model, "version": version, "n": n, "seed": seed, "offset": offset}
        body |= {"truncation": truncation, "labels": _labels(labels), "format": format}
        return self._samples("/generate", body, format, idempotent=seed is not None)

    def interpolate(
        self,
        model: str,
        start: Endpoint,
        end: Endpoint,
        *,
        steps: int = 8,
        method: Literal["slerp", "lerp"] = "slerp",
        truncation: float | None = None,
        version: int | None = None,
        format: SampleFormat = "npy",
    ) -> Samples:
        """A path of `steps` samples from `start` to `end`, both included (always deterministic)."""
        body: dict[str, Any] = {
            "model": model,
            "version": version,
            "start": dict(start),
            "end": dict(end),
            "steps": steps,
        }
        body |= {"method": method, "truncation": truncation, "format": format}
        return self._samples("/interpolate", body, format, idempotent=True)

    def augment(
        self,
        model: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        version: int | None = None,
        format: Literal["npz", "png"] = "npz",
        **spec: Unpack[SetSpec],
    ) -> Samples:
        """One page (rows offset .. offset+limit-1) of a synthetic labelled set; `.total_rows` is its size."""
        body: dict[str, Any] = {
            "model": model,
            "version": version,
            "offset": offset,
            "limit": limit,
            "format": format,
        }
        body |= set_body(spec)
        return self._samples("/augment", body, format, idempotent=spec.get("seed") is not None)

    def augment_pages(
        self,
        model: str,
        *,
        page_rows: int | None = None,
        offset: int = 0,
        version: int | None = None,
        format: Literal["npz", "png"] = "npz",
        **spec: Unpack[SetSpec],
    ) -> Iterator[Samples]:
        """Every page of the set from `offset`, in order, `page_rows` rows each (default: the service's).

        Without a seed, the first page's (the service's choice) is used for the rest: one set, not many.
        """
        while True:
            page = self.augment(model, offset=offset, limit=page_rows, version=version, format=format, **spec)
            yield page
            assert page.seed is not None and page.total_rows is not None  # a set's page always has both
            spec["seed"], version = page.seed, page.version
            offset += len(page)
            if offset >= page.total_rows or not len(page):
                return

    def edit(
        self,
        model: str,
        images: Sequence[ImageFile],
        *,
        edit: EditOperation | None = None,
        labels: Label | Sequence[Label] | None = None,
        resize: bool = False,
        return_latents: bool = False,
        version: int | None = None,
        format: SampleFormat = "npy",
        upload: Literal["json", "multipart"] = "json",
    ) -> Samples:
        """Edit images: z = E(x), z' = edit(z), x' = G(z'); default operation: reconstruct.

        `upload="multipart"` sends the images as files instead of base64 in JSON (a third smaller). An edit
        is a function of its inputs, so it is retried like a seeded call.
        """
        fields: dict[str, Any] = {"model": model, "version": version, "labels": _labels(labels)}
        fields |= {"edit": dict(edit) if edit else None, "resize": resize, "return_latents": return_latents}
        fields["format"] = format
        if upload == "json":
            body = {k: v for k, v in fields.items() if v is not None} | {"images": [_b64(i) for i in images]}
            response = self.request("POST", "/edit", json=body, idempotent=True)
            return parse_samples(response, format)
        files = [
            ("image", (f"image{i}", data, _image_type(data)))
            for i, data in enumerate(map(image_bytes, images))
        ]
        response = self.request("POST", "/edit", data=_form(fields), files=files, idempotent=True)
        return parse_samples(response, format)

    def _samples(self, path: str, body: dict[str, Any], fmt: Format, *, idempotent: bool) -> Samples:
        json = {k: v for k, v in body.items() if v is not None}
        return parse_samples(self.request("POST", path, json=json, idempotent=idempotent), fmt)


def _labels(labels: Label | Sequence[Label] | None) -> Label | list[Label] | None:
    return labels if labels is None or isinstance(labels, int | str) else list(labels)


def _image_type(data: bytes) -> str:
    return "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"


def _form(fields: dict[str, Any]) -> dict[str, str | list[str]]:
    """/edit's fields as form values: nested ones by dots (`edit.label`), lists repeated, booleans as text."""

    def text(value: Any) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    form: dict[str, str | list[str]] = {}
    for name, value in fields.items():
        if isinstance(value, dict):
            form |= {f"{name}.{k}": text(v) for k, v in value.items()}
        elif isinstance(value, list):
            form[name] = [text(v) for v in value]
        elif value is not None:
            form[name] = text(value)
    return form
