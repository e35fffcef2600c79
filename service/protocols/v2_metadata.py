"""The Open Inference Protocol's server and model metadata, shared by HTTP (`v2`) and gRPC (`grpc_v2`).

Which model version a path or message names, whether the server is ready (as /readyz), and what the metadata
says: the platform, the extensions, each model's ready versions and its tensors (inputs `z` [-1, z_dim] FP32,
and `c` [-1, num_classes] FP32 for conditional models; output `x` FP32 in the graph's layout).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from service.repository import ModelNotFound
from service.state import AppState
from service.versions import ReadyModel

SERVER_NAME = "gan-serving"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "parameters"]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


def resolve(state: AppState, name: str, version: str | None) -> ReadyModel:
    """The model, at the version the path names (a decimal number) or its default one."""
    if version is None or name not in state.repository.models:
        return state.repository.get(name)
    if not re.fullmatch(r"[1-9][0-9]{0,8}", version):
        raise ModelNotFound(
            f"model '{name}' has no version '{version}'; versions: {sorted(state.repository.models[name])}"
        )
    return state.repository.get(name, int(version))


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": EXTENSIONS}


def model_metadata(model: ReadyModel, versions: list[str]) -> dict[str, Any]:
    manifest = model.manifest
    inputs = [{"name": "z", "datatype": "FP32", "shape": [-1, manifest.z_dim]}]
    if manifest.num_classes:
        inputs.append({"name": "c", "datatype": "FP32", "shape": [-1, manifest.num_classes]})
    return {
        "name": model.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, *manifest.output_shape]}],
    }


def ready_versions(state: AppState, name: str) -> list[str]:
    versions = state.repository.models.get(name, {})
    return [str(v) for v, model in sorted(versions.items()) if isinstance(model, ReadyModel)]


def not_ready(state: AppState) -> str | None:
    """Why the server is not ready (as /readyz: models loaded, on CUDA when GAN_DEVICE=cuda, not draining)."""
    if state.draining:
        return "the service is draining"
    if not state.repository.ready():
        reasons = [
            f"{m.key}: {m.reason or f'provider {m.provider}'}"
            for m in state.repository.all()
            if m.status != "ready"
        ]
        return "not ready: " + ("; ".join(reasons) or "no model loaded")
    return None
