"""grpc.health.v1 (grpcio-health-checking's messages) beside the v2 service: Check and Watch, for the service ""
and for `inference.GRPCInferenceService`, SERVING exactly when /readyz would answer 200."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from service.protocols.grpc_v2_calls import Calls, Refused, serialize
from service.protocols.v2_metadata import not_ready
from service.state import AppState

HEALTH = "grpc.health.v1.Health"
SERVICE = "inference.GRPCInferenceService"


class HealthService:
    def __init__(self, state: AppState) -> None:
        self.state = state

    def status(self, service: str) -> Any:
        if service not in ("", SERVICE):
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        serving = not_ready(self.state) is None
        return (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def check(self, request: Any, context: Any) -> tuple[Any, str]:
        status = self.status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            raise Refused(404, f"unknown service '{request.service}': '' or {SERVICE}")
        return health_pb2.HealthCheckResponse(status=status), ""

    async def watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """The status now, then each change (polled every 0.2 s) until the client leaves."""
        last = None
        while True:
            status = self.status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(0.2)

    def handler(self, calls: Calls) -> Any:
        """Check as every unary call is admitted and recorded; Watch streams (open, not recorded)."""
        return grpc.method_handlers_generic_handler(
            HEALTH,
            {
                "Check": calls.unary("Check", self.check, health_pb2.HealthCheckRequest),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.watch,
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=serialize,
                ),
            },
        )
