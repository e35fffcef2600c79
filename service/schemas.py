"""Request and response bodies. Static limits live here; limits that are settings are checked in routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.latents import MAX_INDEX, MAX_SEED

Label = int | str  # a class index or a class name from the manifest


class _Body(BaseModel):
    # strict: `true` is not the integer 1 and "3" is not 3; a client that sends them has a bug to hear about
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=128, description="model name (see GET /models)")
    version: int | None = Field(None, ge=1, description="model version; default: the highest ready one")


class GenerateRequest(_Body):
    n: int = Field(1, ge=1, description="number of samples (at most GAN_MAX_N)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="default: chosen by the server, returned")
    offset: int = Field(
        0, ge=0, le=MAX_INDEX, description="index of the first sample; samples are offset .. offset+n-1"
    )
    truncation: float | None = Field(None, ge=0.05, le=10.0, description="truncated-normal threshold on |z|")
    labels: Label | list[Label] | None = Field(
        None, description="conditional models: one class for all, or one per sample"
    )
    format: Literal["png", "npy", "json"] = "png"


class Endpoint(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="latent of sample 0 for this seed")
    z: list[float] | None = Field(None, description="an explicit latent of length z_dim")
    label: Label | None = Field(None, description="conditional models: the class at this end")

    @model_validator(mode="after")
    def _one_source(self) -> Endpoint:
        if (self.seed is None) == (self.z is None):
            raise ValueError("give exactly one of 'seed' or 'z'")
        return self


class InterpolateRequest(_Body):
    start: Endpoint
    end: Endpoint
    steps: int = Field(8, ge=2, description="points on the path, ends included (at most GAN_MAX_STEPS)")
    method: Literal["slerp", "lerp"] = "slerp"
    truncation: float | None = Field(None, ge=0.05, le=10.0, description="applies to seed endpoints")
    format: Literal["png", "npy", "json"] = "png"


class AugmentRequest(_Body):
    per_class: dict[str, int] | None = Field(None, description="synthetic rows per class (name or index)")
    class_counts: dict[str, int] | list[int] | None = Field(
        None, description="the real data set's counts per class"
    )
    target: Literal["balance"] | None = Field(
        None, description="with class_counts: top every class up to the largest"
    )
    ratio: float | None = Field(
        None, gt=0, le=100, description="with class_counts: synthetic rows = ratio x real rows"
    )
    n: int | None = Field(None, ge=1, description="unconditional models: the size of the synthetic set")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    offset: int = Field(0, ge=0, description="first row of the page")
    limit: int | None = Field(None, ge=1, description="rows in the page (at most GAN_MAX_PAGE_ROWS)")
    truncation: float | None = Field(None, ge=0.05, le=10.0)
    format: Literal["npz", "png"] = "npz"

    @model_validator(mode="after")
    def _one_plan(self) -> AugmentRequest:
        plans = [self.per_class is not None, self.class_counts is not None, self.n is not None]
        if sum(plans) != 1:
            raise ValueError(
                "give exactly one of 'per_class', 'class_counts' (with 'target' or 'ratio') or 'n'"
            )
        if self.class_counts is not None and (self.target is None) == (self.ratio is None):
            raise ValueError("'class_counts' needs exactly one of target='balance' or 'ratio'")
        if self.class_counts is None and (self.target is not None or self.ratio is not None):
            raise ValueError("'target' and 'ratio' apply only with 'class_counts'")
        for name, counts in (("per_class", self.per_class), ("class_counts", self.class_counts)):
            values = counts.values() if isinstance(counts, dict) else counts or []
            if any(v < 0 for v in values):
                raise ValueError(f"'{name}' counts must be >= 0")
        return self


class Provenance(BaseModel):
    model: str
    version: int
    onnx_sha256: str
    provider: str
    seed: int | None
    indices: list[int]


class SamplesResponse(Provenance):
    format: Literal["png", "json"]
    shape: list[int] = Field(description="shape of one sample: [C, H, W] or [D]")
    labels: list[int] | None = None
    truncation: float | None = None
    images: list[str] | None = Field(None, description="format=png: base64 PNG per sample")
    data: list[list[float]] | None = Field(
        None, description="format=json: flattened sample values; reshape with 'shape'"
    )
    t: list[float] | None = Field(None, description="/interpolate: position of each point on the path")


class ErrorResponse(BaseModel):
    detail: str
    field: str | None = None


class HealthResponse(BaseModel):
    status: str = Field(description="ok | ready | not ready | draining")
    models: dict[str, str] | None = Field(None, description="not ready: why, per model version")
