"""The model manifest: the contract that training writes and the service validates."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from service.files import atomic_write_bytes
from service.graph_signature import Signature, encoder_signature, generator_signature
from service.output_stats import OutputReference
from service.quality_gates import GateResult, QualityGate, gate_results

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"


class ManifestError(ValueError):
    """A manifest that cannot be read or does not satisfy the contract."""


class Provenance(BaseModel):
    """How the generator was made: enough to reproduce it."""

    model_config = ConfigDict(extra="forbid")

    preset: str
    data: str
    steps: int = Field(ge=0)
    seed: int
    config: dict[str, Any]
    wall_time_s: float = Field(ge=0)
    library_versions: dict[str, str]
    train_command: str | None = None
    export_command: str | None = None
    exported_weights: Literal["ema", "raw"] = "ema"
    # One entry per training invocation (the first run, then each resume): from_step, to_step,
    # wall_time_s, and what `auto` resolved to there: device, precision, threads.
    segments: list[dict[str, Any]] = []
    dry_run: bool = False  # trained on fake data by `--dry-run`: a plumbing test, not a model


class SpaceEvaluation(BaseModel):
    """The same protocol in another evaluator's feature space: its figures are `metrics["<space>.<name>"]`."""

    model_config = ConfigDict(extra="forbid")

    space: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    feature_space: str
    evaluator_sha256: str
    seed: int = Field(ge=0, description="the sample seed of this space's figures")
    reference: str


class Evaluation(BaseModel):
    """How `metrics` were measured: they are numbers only next to their protocol."""

    model_config = ConfigDict(extra="forbid")

    protocol: str
    feature_space: str | None = None
    evaluator_sha256: str | None = None
    samples: int = Field(ge=1)
    seeds: int = Field(ge=1)
    seed: int | None = Field(None, ge=0, description="the first space's sample seed (image protocols)")
    reference: str
    spaces: list[SpaceEvaluation] = Field(default_factory=list)
    evaluated_at: datetime
    command: str | None = None
    wall_time_s: float = Field(ge=0)

    @model_serializer(mode="wrap")
    def _omit_unset_spaces(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`seed` and `spaces` are written only where they were measured: records made before them (and
        the encoder's and utility's) keep their exact bytes."""
        data: dict[str, Any] = handler(self)
        if self.seed is None:
            data.pop("seed", None)
        if not self.spaces:
            data.pop("spaces", None)
        return data


class Encoder(BaseModel):
    """The optional encoder beside the generator, for editing: `z = E(x)`, or `z, logits = E(x, c)`.

    Conditional models: input `c` is the image's one-hot class; an all-zero row means "unknown", and the
    encoder then uses its own prediction (the argmax of `logits`) in its place. Its metrics and gates are its
    own: a failing encoder refuses editing for the version, never its generation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Literal["encoder.onnx"] = "encoder.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input_names: list[str]
    output_names: list[str]
    parity_max_abs_diff: float = Field(ge=0)
    training: dict[str, Any] = Field(default_factory=dict)  # command, steps, wall time, config, losses
    metrics: dict[str, float] = Field(default_factory=dict)
    gates: list[QualityGate] = Field(default_factory=list)
    evaluation: Evaluation | None = None

    def gate_results(self) -> list[GateResult]:
        return gate_results(self.gates, self.metrics)


class Utility(BaseModel):
    """Downstream utility of the synthetic data (`python -m training utility`): a fixed classifier trained on
    synthetic rows (TSTR against TRTR) and on a few real rows with and without them, judged on real test data.
    Informational: its gates are reported, and gate nothing in the service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: dict[str, float] = Field(default_factory=dict)
    gates: list[QualityGate] = Field(default_factory=list)
    evaluation: Evaluation | None = None
    classifier: dict[str, Any] = Field(default_factory=dict)  # architecture, optimiser, steps, seeds

    def gate_results(self) -> list[GateResult]:
        return gate_results(self.gates, self.metrics)


class Direction(BaseModel):
    """A named direction in z (unit length): `z + strength * vector` moves a sample toward `target`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    vector: list[float]
    strength: float = Field(description="the strength at which `metrics` were measured")
    target: str | None = Field(None, description="the evaluator class it moves toward, if any")
    method: str = Field(description="how it was found, e.g. 'interfacegan-logistic'")
    metrics: dict[str, float] = Field(default_factory=dict)


class Manifest(BaseModel):
    """Everything the service needs to know about one exported generator version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: int = Field(ge=1)
    kind: Literal["image", "vector"]
    z_dim: int = Field(ge=1, le=4096)
    num_classes: int = Field(ge=0, le=100_000)
    class_names: list[str]
    # Shape of one sample: [C, H, W] for images, [D] for vectors.
    output_shape: list[int]
    # Images are always in [-1, 1]; vector models (2-D mixtures) are unbounded: null.
    value_range: tuple[float, float] | None
    input_names: list[str]
    output_names: list[str]
    opset: int = Field(ge=7)
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime
    training: Provenance
    parity_max_abs_diff: float = Field(ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    gates: list[QualityGate] = Field(default_factory=list)
    evaluation: Evaluation | None = None
    encoder: Encoder | None = None
    directions: list[Direction] = Field(default_factory=list)
    utility: Utility | None = None
    output_reference: OutputReference | None = None  # for the service's output monitor (service.monitor)

    @model_validator(mode="after")
    def _check_consistency(self) -> Manifest:
        if self.num_classes and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} entries but num_classes is {self.num_classes}"
            )
        if not self.num_classes and self.class_names:
            raise ValueError("class_names must be empty when num_classes is 0")
        want_dims = 3 if self.kind == "image" else 1
        if len(self.output_shape) != want_dims or min(self.output_shape) < 1:
            raise ValueError(
                f"output_shape {self.output_shape} must be {want_dims} positive dims for kind '{self.kind}'"
            )
        if self.kind == "image" and self.output_shape[0] not in (1, 3):
            raise ValueError(f"output_shape channels must be 1 or 3, got {self.output_shape[0]}")
        if self.kind == "image" and self.value_range != (-1.0, 1.0):
            raise ValueError(f"value_range must be [-1, 1] for images, got {self.value_range}")
        want_inputs = ["z", "c"] if self.num_classes else ["z"]
        if self.input_names != want_inputs:
            raise ValueError(f"input_names must be {want_inputs} for num_classes={self.num_classes}")
        if self.output_names != ["x"]:
            raise ValueError(f"output_names must be ['x'], got {self.output_names}")
        for gate in self.gates:
            if gate.metric not in self.metrics and self.metrics:
                raise ValueError(f"gate on '{gate.metric}' but metrics has no such entry")
        self._check_editing()
        if self.output_reference is not None:
            self.output_reference.check(self.num_classes, self.output_shape)
        return self

    def _check_editing(self) -> None:
        if self.encoder is not None:
            inputs, outputs = self.encoder_signature()
            if self.encoder.input_names != list(inputs) or self.encoder.output_names != list(outputs):
                raise ValueError(
                    f"encoder input_names/output_names must be {list(inputs)}/{list(outputs)} "
                    f"for num_classes={self.num_classes}"
                )
        names = [d.name for d in self.directions]
        if len(set(names)) != len(names):
            raise ValueError(f"direction names must be unique, got {names}")
        for direction in self.directions:
            if len(direction.vector) != self.z_dim:
                raise ValueError(
                    f"direction '{direction.name}' has {len(direction.vector)} entries; z_dim is {self.z_dim}"
                )

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    def signature(self) -> Signature:
        """The generator graph this manifest promises (service.graph_signature)."""
        return generator_signature(self.z_dim, self.num_classes, self.output_shape)

    def encoder_signature(self) -> Signature:
        """The encoder graph this manifest promises (service.graph_signature)."""
        return encoder_signature(self.z_dim, self.num_classes, self.output_shape)

    def gate_results(self) -> list[GateResult]:
        return gate_results(self.gates, self.metrics)


def _describe(error: ValidationError, source: str) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(manifest)"
        parts.append(f"field '{field}': {item['msg']}")
    return f"{source}: invalid manifest: " + "; ".join(parts)


def parse_manifest(data: dict[str, Any], source: str = "manifest") -> Manifest:
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        raise ManifestError(_describe(error, source)) from None


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate a manifest.json; every failure is a ManifestError naming the file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest file is missing") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read manifest: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: manifest must be a JSON object, got {type(data).__name__}")
    return parse_manifest(data, str(path))


def save_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> None:
    text = manifest.model_dump_json(indent=2) + "\n"
    atomic_write_bytes(Path(path), text.encode("utf-8"))
