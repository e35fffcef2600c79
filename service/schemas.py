"""Request and response bodies. Static limits live here; limits that are settings are checked in routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.latents import MAX_INDEX, MAX_SEED

Label = int | str  # a class index or a class name from the manifest


class ModelChoice(BaseModel):
    """The model (and version) a request is for; every request body starts with it."""

    # strict: `true` is not the integer 1 and "3" is not 3; a client that sends them has a bug to hear about
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=128, description="model name (see GET /models)")
    version: int | None = Field(None, ge=1, description="model version; default: the highest ready one")


class GenerateRequest(ModelChoice):
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


class InterpolateRequest(ModelChoice):
    start: Endpoint
    end: Endpoint
    steps: int = Field(8, ge=2, description="points on the path, ends included (at most GAN_MAX_STEPS)")
    method: Literal["slerp", "lerp"] = "slerp"
    truncation: float | None = Field(None, ge=0.05, le=10.0, description="applies to seed endpoints")
    format: Literal["png", "npy", "json"] = "png"


class EditOperation(BaseModel):
    """One edit of the recovered latents; exactly one of label, direction, mix_seed and truncation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    label: Label | None = Field(None, description="conditional models: the same z decoded as this class")
    direction: str | None = Field(None, description="a named direction of the manifest: z + strength * v")
    strength: float | None = Field(None, ge=-100, le=100, description="default: the direction's own")
    mix_seed: int | None = Field(None, ge=0, le=MAX_SEED, description="move toward this seed's latent")
    t: float | None = Field(None, ge=0, le=1, description="with mix_seed: how far (default 0.5)")
    method: Literal["slerp", "lerp"] | None = Field(None, description="with mix_seed (default slerp)")
    truncation: float | None = Field(
        None, ge=0, le=1, description="psi: z' = psi * z, toward the mean latent"
    )

    @model_validator(mode="after")
    def _one_operation(self) -> EditOperation:
        chosen = [k for k in ("label", "direction", "mix_seed", "truncation") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of 'label', 'direction', 'mix_seed' or 'truncation'")
        if self.strength is not None and self.direction is None:
            raise ValueError("'strength' applies only with 'direction'")
        if (self.t is not None or self.method is not None) and self.mix_seed is None:
            raise ValueError("'t' and 'method' apply only with 'mix_seed'")
        return self

    @property
    def kind(self) -> Literal["label", "direction", "mix", "truncation"]:
        if self.label is not None:
            return "label"
        if self.direction is not None:
            return "direction"
        return "mix" if self.mix_seed is not None else "truncation"


class EditFields(ModelChoice):
    """Everything of an /edit request but the images (multipart sends those as files)."""

    labels: Label | list[Label] | None = Field(
        None, description="conditional models: the class of every image, or one per image; default: predicted"
    )
    edit: EditOperation | None = Field(None, description="default: reconstruct")
    resize: bool = Field(False, description="resize images to the model's H x W instead of refusing them")
    return_latents: bool = Field(False, description="return each image's recovered z (before the edit)")
    format: Literal["png", "npy", "json"] = "png"


class EditRequest(EditFields):
    images: list[str] = Field(
        min_length=1, description="base64 PNG or JPEG files (at most GAN_MAX_EDIT_IMAGES)"
    )


class Variations(BaseModel):
    """Labelled variations of real images: E(x) + sigma * eps, eps drawn by (seed, row)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    images: list[str] = Field(
        min_length=1, description="base64 PNG or JPEG files (at most GAN_MAX_EDIT_IMAGES)"
    )
    labels: Label | list[Label] | None = Field(None, description="their classes; default: predicted")
    sigma: float = Field(0.3, ge=0, le=10, description="noise scale around each recovered z")
    per_image: int = Field(
        1, ge=1, description="variations of each image; the set has images x per_image rows"
    )
    resize: bool = False


class SetPlan(BaseModel):
    """The plan of a labelled synthetic set, shared by /augment and /datasets: per-class counts, the real set's
    counts with a target or ratio, or n for an unconditional model."""

    model_config = ConfigDict(extra="forbid", strict=True)

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


class AugmentRequest(ModelChoice, SetPlan):
    variations_of: Variations | None = Field(
        None, description="variations of real images (models with encoders)"
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    offset: int = Field(0, ge=0, description="first row of the page")
    limit: int | None = Field(None, ge=1, description="rows in the page (at most GAN_MAX_PAGE_ROWS)")
    truncation: float | None = Field(None, ge=0.05, le=10.0)
    format: Literal["npz", "png"] = "npz"

    @model_validator(mode="after")
    def _one_plan(self) -> AugmentRequest:
        plans = [self.per_class, self.class_counts, self.n, self.variations_of]
        if sum(p is not None for p in plans) != 1:
            raise ValueError(
                "give exactly one of 'per_class', 'class_counts' (with 'target' or 'ratio'), 'n' or 'variations_of'"
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
    encoder_sha256: str | None = Field(None, description="/edit: the encoder that recovered the latents")
    edit: dict[str, object] | None = Field(None, description="/edit: the operation applied")
    latents: list[list[float]] | None = Field(None, description="/edit with return_latents: each recovered z")


class ErrorResponse(BaseModel):
    detail: str
    field: str | None = None


class HealthResponse(BaseModel):
    status: str = Field(description="ok | ready | not ready | draining")
    models: dict[str, str] | None = Field(None, description="not ready: why, per model version")
