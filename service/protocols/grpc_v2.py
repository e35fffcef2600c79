"""Open Inference Protocol (KServe v2) over gRPC, on `GAN_GRPC_PORT` (off by default), in the HTTP server's
event loop: the same batchers, limits, API keys, drain and request metrics as the HTTP routes.

The messages and the service (`inference.GRPCInferenceService`) are the KServe v2 protobuf definitions as
compiled and shipped inside `tritonclient` (`tritonclient.grpc.service_pb2`; Triton's grpc_service.proto, whose
KServe part is the v2 protocol): the service defines none of its own. Served: ServerLive, ServerReady,
ModelReady, ServerMetadata, ModelMetadata and ModelInfer; any other method of that service answers UNIMPLEMENTED.
Health is grpc.health.v1 (grpcio-health-checking's messages): Check and Watch, for the service "" and for
`inference.GRPCInferenceService`, SERVING exactly when /readyz would answer 200.

An inference request is read into the same `v2_tensors.Request` the HTTP route reads, and planned by the same
`v2.plan_inference`: explicit `z` (and `c`) tensors, or the native sample parameters. Inputs come typed
(`contents`) or raw (`raw_input_contents`, little-endian); `x` always goes back raw (`raw_output_contents`), as
tritonclient reads it. Errors are gRPC statuses: INVALID_ARGUMENT (HTTP 400), NOT_FOUND (404), UNAUTHENTICATED
(401), RESOURCE_EXHAUSTED (429, with `retry-after` in the trailing metadata; and bodies over the limit),
UNAVAILABLE (503), DEADLINE_EXCEEDED (504), CANCELLED (the client left).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from fastapi import Request
from grpc_health.v1 import health_pb2
from pydantic import ValidationError
from tritonclient.grpc import service_pb2 as pb

from service.auth import KeyRing, presented_key
from service.gate import UNAUTHORIZED
from service.inference import run_model
from service.protocols import v2
from service.protocols.v2_tensors import (
    InferenceRequest,
    Parameter,
    TensorError,
    from_bytes,
    from_json,
    validation_message,
)
from service.protocols.v2_tensors import Request as TensorRequest
from service.repository import ReadyModel
from service.routes import model_label
from service.state import AppState

log = logging.getLogger("service.grpc")

SERVICE = "inference.GRPCInferenceService"
HEALTH = "grpc.health.v1.Health"
OPEN_METHODS = {"ServerLive", "ServerReady", "Check", "Watch"}  # no key needed, answered while draining
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Which typed `contents` field carries each datatype (FP16 and BF16 travel raw only).
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


class Refused(Exception):
    """An RPC answered with an error status: `status` is the HTTP code it stands for."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def parameter_value(parameter: Any, field: str) -> Parameter:
    which = parameter.WhichOneof("parameter_choice")
    if which is None:
        raise TensorError("a parameter without a value", field)
    value: Parameter = getattr(parameter, which)
    return value


def to_parameter(value: Parameter) -> Any:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=value)


def parameters_of(given: Any, field: str) -> dict[str, Parameter] | None:
    if not given:
        return None
    return {key: parameter_value(value, f"{field}.{key}") for key, value in given.items()}


def read_infer_request(request: Any) -> TensorRequest:
    """A ModelInferRequest as the HTTP route's `v2_tensors.Request`: the header validated the same way."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise TensorError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: one per input",
            "raw_input_contents",
        )
    fields: dict[str, Any] = {
        "id": request.id or None,
        "parameters": parameters_of(request.parameters, "parameters"),
        "inputs": [
            {"name": t.name, "shape": list(t.shape), "datatype": t.datatype}
            | ({"parameters": parameters_of(t.parameters, f"inputs[{i}].parameters")} if t.parameters else {})
            for i, t in enumerate(request.inputs)
        ],
        "outputs": [
            {"name": t.name}
            | (
                {"parameters": parameters_of(t.parameters, f"outputs[{i}].parameters")}
                if t.parameters
                else {}
            )
            for i, t in enumerate(request.outputs)
        ]
        or None,
    }
    try:
        header = InferenceRequest.model_validate(fields)
    except ValidationError as error:
        detail, field = validation_message(error)
        raise TensorError(detail, field) from None
    arrays = {}
    for i, spec in enumerate(header.inputs):
        field = f"inputs[{i}]"
        if spec.name in arrays:
            raise TensorError(f"input '{spec.name}' is given twice", f"{field}.name")
        if spec.parameters:
            raise TensorError(f"unknown input parameters {sorted(spec.parameters)}", f"{field}.parameters")
        if raw:
            arrays[spec.name] = from_bytes(memoryview(raw[i]), spec.shape, spec.datatype, field)
        else:
            contents = getattr(request.inputs[i].contents, CONTENTS.get(spec.datatype, "bytes_contents"))
            values = list(contents) if spec.datatype in CONTENTS else []
            arrays[spec.name] = from_json(values, spec.shape, spec.datatype, f"{field}.contents")
    return TensorRequest(header, arrays)


def rpc_request(context: Any) -> Request:
    """The RPC as the batcher's callers see a request: its end (done or cancelled) reads as a disconnect."""
    ended = asyncio.Event()
    context.add_done_callback(lambda _: ended.set())

    async def receive() -> dict[str, Any]:
        await ended.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/grpc", "headers": []}, receive)


class InferenceService:
    """The v2 methods and grpc.health.v1, on the app's state; every call is admitted as the HTTP gate admits."""

    def __init__(self, state: AppState, keys: KeyRing | None, version: str) -> None:
        self.state, self.keys, self.version = state, keys, version

    # --- admission, errors and metrics, around every method -----------------------------------------------

    def admit(self, method: str, context: Any) -> None:
        if method in OPEN_METHODS:
            return
        if self.keys is not None:
            metadata = [
                (key.encode("latin-1"), value.encode("latin-1"))
                for key, value in context.invocation_metadata() or ()
                if isinstance(value, str)
            ]
            if not self.keys.accepts(presented_key(metadata)):
                self.state.metrics.rejections.labels("", "unauthorized").inc()
                raise Refused(401, UNAUTHORIZED.detail)
        if self.state.draining:
            self.state.metrics.rejections.labels("", "draining").inc()
            raise Refused(503, "the service is draining; retry on another replica", {"retry-after": "1"})

    def refusal(self, error: Exception, model: str) -> Refused:
        if isinstance(error, Refused):
            return error
        found = v2.problem(error, self.state)
        if found is None:
            log.exception("gRPC call failed", exc_info=error)
            return Refused(500, f"internal error: {type(error).__name__}")
        if found.reason is not None:
            self.state.metrics.rejections.labels(model, found.reason).inc()
        detail = f"{found.field}: {found.detail}" if found.field else found.detail
        return Refused(found.status, detail, {k.lower(): v for k, v in (found.headers or {}).items()})

    def unary(self, method: str, handler: Callable[[Any, Any], Awaitable[tuple[Any, str]]]) -> Any:
        """An RPC handler: admit, count in flight (so a drain waits for it), answer, record the request."""

        async def call(request: Any, context: Any) -> Any:
            started, status, model = time.perf_counter(), 200, ""
            counted = method not in OPEN_METHODS
            if counted:
                self.state.inflight += 1
                self.state.metrics.inflight.set(self.state.inflight)
            try:
                try:
                    self.admit(method, context)
                    response, model = await handler(request, context)
                    return response
                except asyncio.CancelledError:
                    status = 499
                    raise
                except Exception as error:
                    named = getattr(request, "model_name", "") or getattr(request, "name", "")
                    model = model_label(self.state, named) if method not in ("Check", "Watch") else ""
                    refused = self.refusal(error, model)
                    status = refused.status
                    await context.abort(
                        CODES.get(refused.status, grpc.StatusCode.UNKNOWN),
                        refused.detail,
                        tuple(refused.headers.items()),
                    )
            finally:
                if counted:
                    self.state.inflight -= 1
                    self.state.metrics.inflight.set(self.state.inflight)
                endpoint = f"grpc {method}"
                self.state.metrics.requests.labels(endpoint, model, str(status)).inc()
                self.state.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=REQUESTS[method].FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )

    # --- the protocol's methods ------------------------------------------------------------------------------

    async def server_live(self, request: Any, context: Any) -> tuple[Any, str]:
        return pb.ServerLiveResponse(live=True), ""

    async def server_ready(self, request: Any, context: Any) -> tuple[Any, str]:
        return pb.ServerReadyResponse(ready=v2.not_ready(self.state) is None), ""

    async def model_ready(self, request: Any, context: Any) -> tuple[Any, str]:
        model = v2.resolve(self.state, request.name, request.version or None)
        return pb.ModelReadyResponse(ready=True), model.name

    async def server_metadata(self, request: Any, context: Any) -> tuple[Any, str]:
        return pb.ServerMetadataResponse(
            name="gan-serving", version=self.version, extensions=v2.EXTENSIONS
        ), ""

    async def model_metadata(self, request: Any, context: Any) -> tuple[Any, str]:
        model = v2.resolve(self.state, request.name, request.version or None)
        versions = [str(model.version)] if request.version else v2.ready_versions(self.state, model.name)
        meta = v2.model_metadata(model, versions)
        tensors = {
            key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta[key]]
            for key in ("inputs", "outputs")
        }
        return pb.ModelMetadataResponse(
            name=model.name, versions=versions, platform=v2.PLATFORM, **tensors
        ), model.name

    async def model_infer(self, request: Any, context: Any) -> tuple[Any, str]:
        model: ReadyModel = v2.resolve(self.state, request.model_name, request.model_version or None)
        parsed = read_infer_request(request)
        planned = await v2.plan_inference(parsed, model, self.state.settings, raw=True)
        plan = planned.plan
        x = await run_model(model, plan.feeds, plan.rows, rpc_request(context), self.state)
        served = v2.served_x(x, planned.datatype)
        parameters = v2.response_parameters(model, plan, planned.truncation)
        response = pb.ModelInferResponse(
            model_name=model.name,
            model_version=str(model.version),
            id=parsed.header.id or "",
            parameters={key: to_parameter(value) for key, value in parameters.items()},
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name="x", datatype=planned.datatype, shape=list(served.shape)
                )
            ],
            raw_output_contents=[served.tobytes()],
        )
        return response, model.name

    # --- grpc.health.v1 --------------------------------------------------------------------------------------

    def health_status(self, service: str) -> Any:
        if service not in ("", SERVICE):
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        serving = v2.not_ready(self.state) is None
        return (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def health_check(self, request: Any, context: Any) -> tuple[Any, str]:
        status = self.health_status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            raise Refused(404, f"unknown service '{request.service}': '' or {SERVICE}")
        return health_pb2.HealthCheckResponse(status=status), ""

    async def health_watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """The status now, then each change (polled every 0.2 s) until the client leaves."""
        last = None
        while True:
            status = self.health_status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(0.2)

    def handlers(self) -> list[Any]:
        methods = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
        }
        inference = grpc.method_handlers_generic_handler(
            SERVICE, {name: self.unary(name, handler) for name, handler in methods.items()}
        )
        health = grpc.method_handlers_generic_handler(
            HEALTH,
            {
                "Check": self.unary("Check", self.health_check),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.health_watch,
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=lambda m: m.SerializeToString(),
                ),
            },
        )
        return [inference, health]


REQUESTS: dict[str, Any] = {
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
    "Check": health_pb2.HealthCheckRequest,
}


async def start_server(state: AppState, keys: KeyRing | None, version: str) -> Any:
    """A started grpc.aio server on GAN_HOST:GAN_GRPC_PORT; stop it with `await server.stop(grace)`."""
    settings = state.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", settings.max_response_bytes + (1 << 20)),
        ]
    )
    server.add_generic_rpc_handlers(InferenceService(state, keys, version).handlers())
    address = f"{settings.host}:{settings.grpc_port}"
    server.add_insecure_port(address)
    await server.start()
    log.info("Open Inference Protocol gRPC on %s", address)
    return server
