"""Starting a grpc.aio server with health checking and reflection; graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..errors import Unavailable
from .tls import warn_if_exposed

log = structlog.get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


# Health service name that reports SERVING while the process answers at all (Kubernetes
# liveness), unlike "" and the API's name, which follow readiness (model loaded, upstreams
# reachable, not draining). Only graceful shutdown turns it NOT_SERVING.
LIVENESS = "liveness"


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start_server(host: str, port: int, register: Callable[[grpc.aio.Server], None],
                       service_names: list[str],
                       credentials: grpc.ServerCredentials | None = None,
                       max_receive_bytes: int = MAX_MESSAGE_BYTES) -> RunningServer:
    """Start a server with `register`ed servicers, health (NOT_SERVING until set_serving)
    and reflection. port 0 binds any free port; the bound one is returned. credentials:
    TLS (specdec.rpc.tls); None = plaintext. max_receive_bytes: larger messages get
    RESOURCE_EXHAUSTED from gRPC itself, before they are parsed."""
    # SO_REUSEPORT (gRPC's default) would let a second server share a busy port silently.
    receive = "grpc.max_receive_message_length"
    options = [o for o in CHANNEL_OPTIONS if o[0] != receive]
    server = grpc.aio.server(options=[*options, (receive, max_receive_bytes),
                                      ("grpc.so_reuseport", 0)])
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME], server)
    try:
        bound = (server.add_insecure_port(f"{host}:{port}") if credentials is None
                 else server.add_secure_port(f"{host}:{port}", credentials))
    except RuntimeError as e:  # grpcio raises when the address cannot be bound
        raise Unavailable(f"cannot bind {host}:{port} (in use?): {e}") from None
    await server.start()
    warn_if_exposed(host, "the gRPC server", credentials is not None)
    running = RunningServer(server, bound, health_servicer, service_names)
    await running.set_serving(False)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    return running


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
