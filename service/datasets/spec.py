"""A dataset job's spec and its row plan: the rows are exactly /augment's rows for the same plan and seed.

Row j of the set has latent (seed, j) and the class the plan puts at j (service.plans.set_rows, the function
/augment pages are cut from); shard k holds rows k * shard_rows .. (k + 1) * shard_rows - 1. A shard is a pure
function of the resolved spec (seed and version fixed) and the model's graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from service.latents import MAX_SEED
from service.manifest import Manifest
from service.plans import Plan, augment_counts, chosen_seed, set_rows
from service.schemas import AugmentRequest, ModelChoice, SetPlan

Format = Literal["webdataset", "parquet", "npz"]
PLAN_FIELDS = ("per_class", "class_counts", "target", "ratio", "n")


class DatasetRequest(ModelChoice, SetPlan):
    """POST /datasets: the plan of /augment (per_class, class_counts with target or ratio, or n), a seed, and
    how to write it: rows per shard and the shard format."""

    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="default: chosen by the server, returned")
    truncation: float | None = Field(None, ge=0.05, le=10.0)
    shard_rows: int = Field(1000, ge=1, le=1_000_000, description="rows per shard (the last may have fewer)")
    format: Format = Field(
        "webdataset",
        description="webdataset: tar shards of KEY.png (KEY.npy for vector models), KEY.cls (conditional "
        "models), KEY.json; parquet: image bytes (or x), label, seed, index columns; npz: x, y, seed, index",
    )
    png_provenance: bool | None = Field(
        None, description="PNGs carry their provenance text chunks; default: GAN_PNG_PROVENANCE"
    )

    @model_validator(mode="after")
    def _one_plan(self) -> DatasetRequest:
        self.augment_request()  # the plan's rules are /augment's, checked by its own schema
        return self

    def augment_request(self, offset: int = 0) -> AugmentRequest:
        """The /augment request for the same set (its page at `offset`)."""
        fields: dict[str, Any] = {name: getattr(self, name) for name in PLAN_FIELDS}
        fields |= {"model": self.model, "version": self.version, "seed": self.seed, "offset": offset}
        fields |= {"truncation": self.truncation, "format": "npz"}
        try:
            return AugmentRequest.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as error:
            raise ValueError(
                "; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())
            ) from None

    def plan_field(self) -> str:
        """The field that carries the plan (errors about the set's size name it)."""
        return next((name for name in ("n", "per_class") if getattr(self, name) is not None), "class_counts")


class JobSpec(DatasetRequest):
    """A spec with everything resolved (what a job stores and `python -m service.datasets write` reads)."""

    version: int = Field(ge=1, description="the model version the shards come from")
    seed: int = Field(ge=0, le=MAX_SEED)
    png_provenance: bool = True


def resolved(body: DatasetRequest, version: int, png_provenance: bool) -> JobSpec:
    """The spec with its seed, version and PNG provenance fixed: what makes every shard reproducible."""
    fields = body.model_dump() | {"seed": chosen_seed(body.seed), "version": version}
    fields["png_provenance"] = png_provenance if body.png_provenance is None else body.png_provenance
    return JobSpec.model_validate(fields)


@dataclass(frozen=True)
class RowPlan:
    """The whole set of a job: its class counts, its size and how it is cut into shards."""

    spec: JobSpec
    manifest: Manifest
    counts: np.ndarray

    @classmethod
    def of(cls, spec: JobSpec, manifest: Manifest) -> RowPlan:
        return cls(spec, manifest, augment_counts(spec.augment_request(), manifest))

    @property
    def total_rows(self) -> int:
        return int(self.counts.sum())

    @property
    def shards(self) -> int:
        return math.ceil(self.total_rows / self.spec.shard_rows)

    def shard_range(self, k: int) -> tuple[int, int]:
        start = k * self.spec.shard_rows
        return start, min(start + self.spec.shard_rows, self.total_rows)

    def shard_plan(self, k: int) -> Plan:
        """Latents and classes of shard k's rows (CPU work: build it off the event loop)."""
        start, stop = self.shard_range(k)
        return set_rows(self.counts, start, stop - start, self.manifest, self.spec.seed, self.spec.truncation)

    def info(self) -> dict[str, Any]:
        """What the metadata needs of the model, stored with the job: kind, shape, classes and counts."""
        manifest = self.manifest
        return {
            "kind": manifest.kind, "output_shape": list(manifest.output_shape),
            "class_names": list(manifest.class_names) if manifest.num_classes else [],
            "counts": self.counts.tolist(), "index_ranges": self.index_ranges(),
        }  # fmt: skip

    def index_ranges(self) -> list[dict[str, int]]:
        """Per class (conditional models), the index range of its rows: [start, stop)."""
        ends = np.cumsum(self.counts)
        return [
            {"label": c, "start": int(end - count), "stop": int(end)}
            for c, (count, end) in enumerate(zip(self.counts, ends, strict=True))
            if count
        ]
