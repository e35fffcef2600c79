"""Request plans: pure functions from a validated request and its model's manifest to the rows to compute.

A plan says which samples a request asks for (seed, indices, labels), builds the generator feeds for them,
and checks every limit that depends on the model or the settings. Routes only validate, plan, batch, encode.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import numpy as np

from service.batcher import Feeds
from service.latents import MAX_SEED, latents, lerp, one_hot, sample_latent, slerp
from service.manifest import Manifest
from service.schemas import AugmentRequest, Endpoint, GenerateRequest, InterpolateRequest, Label
from service.settings import Settings


class PlanError(ValueError):
    """A request the model or the settings cannot serve: `field` names the field, the message the limit."""

    def __init__(self, detail: str, field: str) -> None:
        super().__init__(detail)
        self.detail, self.field = detail, field


@dataclass(frozen=True)
class Plan:
    """The rows one request computes, with the identity of each: (seed, index) and the class if any."""

    feeds: Feeds
    seed: int | None
    indices: list[int]
    labels: np.ndarray | None = None  # class per row, conditional models only
    total_rows: int | None = None  # /augment: the size of the whole set this page belongs to
    t: list[float] | None = field(default=None)  # /interpolate: position of each row on the path

    @property
    def rows(self) -> int:
        return len(self.indices)


def chosen_seed(seed: int | None) -> int:
    """The request's seed, or one drawn by the server (and returned to the client)."""
    return seed if seed is not None else secrets.randbelow(MAX_SEED + 1)


def resolve_label(label: Label, manifest: Manifest, field: str) -> int:
    if not manifest.num_classes:
        raise PlanError(f"model {manifest.name} is unconditional: it takes no labels", field)
    if isinstance(label, str):
        if label in manifest.class_names:
            return manifest.class_names.index(label)
        if not label.isdigit():
            raise PlanError(f"unknown class '{label}'; classes: {manifest.class_names}", field)
        label = int(label)
    if not 0 <= label < manifest.num_classes:
        raise PlanError(f"label {label} out of range: must be 0 .. {manifest.num_classes - 1}", field)
    return label


def resolve_labels(
    labels: Label | list[Label] | None, manifest: Manifest, n: int, offset: int
) -> np.ndarray | None:
    """One label per sample; without labels a conditional model cycles through its classes by sample index."""
    if labels is None:
        return (np.arange(offset, offset + n) % manifest.num_classes) if manifest.num_classes else None
    if isinstance(labels, list):
        if len(labels) != n:
            raise PlanError(f"labels has {len(labels)} entries but n is {n}", "labels")
        return np.array(
            [resolve_label(v, manifest, f"labels[{i}]") for i, v in enumerate(labels)], dtype=np.int64
        )
    return np.full(n, resolve_label(labels, manifest, "labels"), dtype=np.int64)


def sample_feeds(
    seed: int, offset: int, n: int, manifest: Manifest, truncation: float | None, labels: np.ndarray | None
) -> Feeds:
    """Feeds for samples offset .. offset + n - 1 of `seed`: latents, and one-hot classes when conditional."""
    feeds = {"z": latents(seed, offset, n, manifest.z_dim, truncation)}
    return feeds | ({"c": one_hot(labels, manifest.num_classes)} if labels is not None else {})


# Bytes one sample value costs in each response format: uint8 pixels (PNG and base64 add at most about 1.4x
# over raw bytes for these small images), float32 vectors, JSON numbers as text.
VALUE_BYTES = {("image", "png"): 2, ("image", "npy"): 1, ("image", "npz"): 1, ("image", "json"): 24}


# A PNG's provenance chunks (service.encoding: text chunks and the XMP marking), as base64 in JSON
PNG_PROVENANCE_BYTES = 1100


def check_response_size(settings: Settings, manifest: Manifest, rows: int, fmt: str, field: str) -> None:
    per_value = VALUE_BYTES.get((manifest.kind, fmt), 4 if fmt in ("npy", "npz") else 24)
    size = rows * math.prod(manifest.output_shape) * per_value
    if manifest.kind == "image" and fmt == "png" and settings.png_provenance:
        size += rows * PNG_PROVENANCE_BYTES
    if size > settings.max_response_bytes:
        raise PlanError(
            f"{rows} rows of {manifest.name} as {fmt} would be about {size} bytes; at most "
            f"{settings.max_response_bytes} (GAN_MAX_RESPONSE_BYTES): ask for fewer rows or a binary format",
            field,
        )


def check_limit(value: int, limit: int, field: str, setting: str) -> None:
    if value > limit:
        raise PlanError(f"{field} must be <= {limit} ({setting}), got {value}", field)


def generate_plan(body: GenerateRequest, manifest: Manifest, settings: Settings, seed: int) -> Plan:
    check_limit(body.n, settings.max_n, "n", "GAN_MAX_N")
    check_response_size(settings, manifest, body.n, body.format, "n")
    labels = resolve_labels(body.labels, manifest, body.n, body.offset)
    feeds = sample_feeds(seed, body.offset, body.n, manifest, body.truncation, labels)
    return Plan(feeds, seed, list(range(body.offset, body.offset + body.n)), labels)


def endpoint_latent(end: Endpoint, manifest: Manifest, truncation: float | None, field: str) -> np.ndarray:
    if end.z is None:
        assert end.seed is not None  # the schema requires exactly one of seed and z
        return sample_latent(end.seed, 0, manifest.z_dim, truncation)
    z = np.asarray(end.z, dtype=np.float64)
    if len(z) != manifest.z_dim:
        raise PlanError(
            f"z has length {len(z)}; model {manifest.name} needs z_dim = {manifest.z_dim}", f"{field}.z"
        )
    if not np.isfinite(z).all() or np.abs(z).max() > 1e4:
        raise PlanError("z must be finite numbers with |z| <= 10000", f"{field}.z")
    return z.astype(np.float32)


def endpoint_class(end: Endpoint, manifest: Manifest, field: str) -> np.ndarray | None:
    """The one-hot class at one end of a path (conditional models), or None (unconditional ones)."""
    if not manifest.num_classes:
        if end.label is not None:
            raise PlanError(f"model {manifest.name} is unconditional: it takes no labels", f"{field}.label")
        return None
    if end.label is None:
        raise PlanError(f"model {manifest.name} is conditional: give a label", f"{field}.label")
    label = resolve_label(end.label, manifest, f"{field}.label")
    c: np.ndarray = one_hot(np.array([label]), manifest.num_classes)[0]
    return c


def interpolate_plan(body: InterpolateRequest, manifest: Manifest, settings: Settings) -> Plan:
    """A path of `steps` rows from start to end (both included); classes blend through soft `c`."""
    check_limit(body.steps, settings.max_steps, "steps", "GAN_MAX_STEPS")
    check_response_size(settings, manifest, body.steps, body.format, "steps")
    za = endpoint_latent(body.start, manifest, body.truncation, "start")
    zb = endpoint_latent(body.end, manifest, body.truncation, "end")
    ca, cb = endpoint_class(body.start, manifest, "start"), endpoint_class(body.end, manifest, "end")
    t = np.linspace(0.0, 1.0, body.steps)
    feeds = {"z": (slerp if body.method == "slerp" else lerp)(za, zb, t)}
    if ca is not None and cb is not None:
        feeds["c"] = lerp(ca, cb, t)
    return Plan(feeds, None, list(range(body.steps)), t=t.tolist())


def augment_field(body: AugmentRequest) -> str:
    """The field that carries the request's plan (errors about the set's size name it)."""
    for name in ("n", "per_class", "variations_of"):
        if getattr(body, name) is not None:
            return name
    return "class_counts"


def augment_counts(body: AugmentRequest, manifest: Manifest) -> np.ndarray:
    """Synthetic rows per class (length num_classes), or [n] for an unconditional model."""
    if not manifest.num_classes:
        if body.n is None:
            raise PlanError(f"model {manifest.name} is unconditional: give 'n', not per-class counts", "n")
        return np.array([body.n], dtype=np.int64)
    if body.n is not None:
        raise PlanError(f"model {manifest.name} is conditional: give 'per_class' or 'class_counts'", "n")
    field = augment_field(body)
    counts = np.zeros(manifest.num_classes, dtype=np.int64)
    given = body.per_class if body.per_class is not None else body.class_counts
    if isinstance(given, list):
        if len(given) != manifest.num_classes:
            raise PlanError(f"has {len(given)} entries; the model has {manifest.num_classes} classes", field)
        counts[:] = given
    else:
        assert given is not None  # the schema requires one of per_class, class_counts and n
        for key, value in given.items():
            counts[resolve_label(key, manifest, f"{field}.{key}")] += value
    if body.class_counts is None:
        return counts
    planned: np.ndarray = (
        counts.max() - counts if body.target == "balance" else np.rint(counts * (body.ratio or 0.0))
    )
    return planned.astype(np.int64)


def page_rows(body: AugmentRequest, total: int, settings: Settings, manifest: Manifest) -> int:
    """Rows in the requested page of a set of `total` rows, after every limit on the set and the page."""
    if total > settings.max_augment_rows:
        raise PlanError(
            f"the set would have {total} rows; at most {settings.max_augment_rows} (GAN_MAX_AUGMENT_ROWS)",
            augment_field(body),
        )
    if total == 0:
        raise PlanError("the plan asks for 0 synthetic rows", augment_field(body))
    if body.offset >= total:
        raise PlanError(f"offset must be < {total} (the set's size), got {body.offset}", "offset")
    limit = body.limit if body.limit is not None else min(settings.max_page_rows, total - body.offset)
    check_limit(limit, settings.max_page_rows, "limit", "GAN_MAX_PAGE_ROWS")
    rows = min(limit, total - body.offset)
    check_response_size(settings, manifest, rows, body.format, "limit")
    return rows


def augment_plan(body: AugmentRequest, manifest: Manifest, settings: Settings, seed: int) -> Plan:
    """One page of a deterministic labelled set: row j has latent (seed, j) and the j-th class of the plan."""
    counts = augment_counts(body, manifest)
    rows = page_rows(body, int(counts.sum()), settings, manifest)
    return set_rows(counts, body.offset, rows, manifest, seed, body.truncation)


def set_rows(
    counts: np.ndarray, offset: int, rows: int, manifest: Manifest, seed: int, truncation: float | None
) -> Plan:
    """Rows offset .. offset + rows - 1 of the set with `counts` rows per class, in class order: row j has latent
    (seed, j) and class c where counts[:c].sum() <= j < counts[:c + 1].sum(). /augment pages and /datasets
    shards are both cut from it."""
    index = np.arange(offset, offset + rows)
    y = np.searchsorted(np.cumsum(counts), index, side="right") if manifest.num_classes else None
    feeds = sample_feeds(seed, offset, rows, manifest, truncation, y)
    return Plan(feeds, seed, index.tolist(), y, total_rows=int(counts.sum()))
