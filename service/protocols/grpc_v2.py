"""Open Inference Protocol (KServe v2) over gRPC, on `GAN_GRPC_PORT` (off by default), in the HTTP server's
event loop: the same batchers, limits, API keys, drain and request metrics as the HTTP routes.

The messages and the service (`inference.GRPCInferenceService`) are the KServe v2 protobuf definitions as
compiled and shipped inside `tritonclient` (`tritonclient.grpc.service_pb2`; Triton's grpc_service.proto, whose
KServe part is the v2 protocol): the service defines none of its own. Served: ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata, ModelInfer, and the repository calls (RepositoryIndex,
RepositoryModelLoad, RepositoryModelUnload: the admin key, service.control); any other method of that service answers UNIMPLEMENTED.
Health is grpc.health.v1 (service.protocols.grpc_v2_health).

An inference request is read (service.protocols.grpc_v2_messages) into the same `v2_tensors.Request` the HTTP
route reads, and planned by the same `v2_plans.plan_inference`: explicit `z` (and `c`) tensors, or the native
sample parameters. Inputs come typed (`contents`) or raw (`raw_input_contents`, little-endian); `x` always goes
back raw (`raw_output_contents`), as tritonclient reads it. Every call is admitted, counted and answered by
service.protocols.grpc_v2_calls. Errors are gRPC statuses: INVALID_ARGUMENT (HTTP 400), NOT_FOUND (404),
UNAUTHENTICATED (401), RESOURCE_EXHAUSTED (429, with `retry-after` in the trailing metadata; and bodies over the
limit), UNAVAILABLE (503), DEADLINE_EXCEEDED (504), CANCELLED (the client left).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb

from service import tracing
from service.auth import KeyRing
from service.errors import ApiError
from service.inference import run_model
from service.protocols import v2_metadata
from service.protocols.grpc_v2_calls import Calls, Handler, rpc_request
from service.protocols.grpc_v2_health import SERVICE, HealthService
from service.protocols.grpc_v2_messages import infer_response, read_infer_request
from service.protocols.v2_metadata import model_metadata, not_ready, ready_versions, resolve
from service.protocols.v2_plans import plan_inference, response_parameters, served_x
from service.protocols.v2_repository import IGNORED_PARAMETERS
from service.routes import model_label
from service.state import AppState
from service.versions import ReadyModel

log = logging.getLogger("service.grpc")

REQUESTS: dict[str, Any] = {
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
    "RepositoryIndex": pb.RepositoryIndexRequest,
    "RepositoryModelLoad": pb.RepositoryModelLoadRequest,
    "RepositoryModelUnload": pb.RepositoryModelUnloadRequest,
}


class InferenceService:
    """The v2 methods, on the app's state."""

    def __init__(self, state: AppState, version: str) -> None:
        self.state, self.version = state, version

    async def server_live(self, request: Any, context: Any) -> tuple[Any, str]:
        return pb.ServerLiveResponse(live=True), ""

    async def server_ready(self, request: Any, context: Any) -> tuple[Any, str]:
        return pb.ServerReadyResponse(ready=not_ready(self.state) is None), ""

    async def model_ready(self, request: Any, context: Any) -> tuple[Any, str]:
        model = resolve(self.state, request.name, request.version or None)
        return pb.ModelReadyResponse(ready=True), model.name

    async def server_metadata(self, request: Any, context: Any) -> tuple[Any, str]:
        return pb.ServerMetadataResponse(**v2_metadata.server_metadata(self.version)), ""

    async def model_metadata(self, request: Any, context: Any) -> tuple[Any, str]:
        model = resolve(self.state, request.name, request.version or None)
        versions = [str(model.version)] if request.version else ready_versions(self.state, model.name)
        meta = model_metadata(model, versions)
        tensors = {
            key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta[key]]
            for key in ("inputs", "outputs")
        }
        return pb.ModelMetadataResponse(
            name=model.name, versions=versions, platform=v2_metadata.PLATFORM, **tensors
        ), model.name

    async def model_infer(self, request: Any, context: Any) -> tuple[Any, str]:
        model: ReadyModel = resolve(self.state, request.model_name, request.model_version or None)
        parsed = read_infer_request(request)
        planned = await plan_inference(parsed, model, self.state.settings, raw=True)
        plan = planned.plan
        tracing.annotate(model.name, model.version, plan.rows, "grpc")
        x = await run_model(model, plan.feeds, plan.rows, rpc_request(context), self.state)
        served = served_x(x, planned.datatype)
        parameters = response_parameters(model, plan, planned.truncation)
        return infer_response(model, parsed.header.id, served, planned.datatype, parameters), model.name

    async def repository_index(self, request: Any, context: Any) -> tuple[Any, str]:
        rows = self.state.control.index(ready_only=request.ready)
        models = [pb.RepositoryIndexResponse.ModelIndex(**row.__dict__) for row in rows]
        return pb.RepositoryIndexResponse(models=models), ""

    async def repository_load(self, request: Any, context: Any) -> tuple[Any, str]:
        check_control_request(request)
        await self.state.control.load(request.model_name)
        return pb.RepositoryModelLoadResponse(), request.model_name

    async def repository_unload(self, request: Any, context: Any) -> tuple[Any, str]:
        check_control_request(request)
        label = model_label(self.state, request.model_name)
        await self.state.control.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse(), label

    def handler(self, calls: Calls) -> Any:
        methods: dict[str, Handler] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
            "RepositoryIndex": self.repository_index,
            "RepositoryModelLoad": self.repository_load,
            "RepositoryModelUnload": self.repository_unload,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE, {name: calls.unary(name, method, REQUESTS[name]) for name, method in methods.items()}
        )


def check_control_request(request: Any) -> None:
    """Load and unload read the model's folder as it is: Triton's config and file overrides are refused."""
    given = sorted(set(request.parameters) - IGNORED_PARAMETERS)
    if given:
        raise ApiError(400, f"not supported: {given}", f"parameters.{given[0]}")


async def start_server(
    state: AppState, keys: KeyRing | None, version: str, admin: KeyRing | None = None
) -> Any:
    """A started grpc.aio server on GAN_HOST:GAN_GRPC_PORT; stop it with `await server.stop(grace)`."""
    settings = state.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", settings.max_response_bytes + (1 << 20)),
        ]
    )
    calls = Calls(state, keys, admin)
    server.add_generic_rpc_handlers(
        [InferenceService(state, version).handler(calls), HealthService(state).handler(calls)]
    )
    address = f"{settings.host}:{settings.grpc_port}"
    server.add_insecure_port(address)
    await server.start()
    log.info("Open Inference Protocol gRPC on %s", address)
    return server
