"""Requests that cannot be parsed get INVALID_ARGUMENT, not grpcio's INTERNAL.

grpcio answers a request its deserializer rejects (e.g. a string field holding invalid
UTF-8, which a non-Python client can send) with INTERNAL "Exception deserializing request!".
That is the caller's mistake, so `add_tolerant` registers a generated servicer with
deserializers that hand such a request to the method as `Malformed`, and wraps each method to
answer it with INVALID_ARGUMENT and protobuf's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Malformed:
    reason: str


def _message(m: Malformed) -> str:
    return (f"the request could not be parsed: {m.reason} (string fields must be valid "
            f"UTF-8, and the message must match the service's .proto)")


def _tolerant_deserializer(deserialize):
    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as e:  # protobuf's DecodeError, or anything a parser raises
            return Malformed(str(e))
    return parse


def _guard_unary(fn):
    async def method(request, context):
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
        return await fn(request, context)
    return method


def _guard_stream(fn):
    async def method(request, context):
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
        async for response in fn(request, context):
            yield response
    return method


def _guard_bidi(fn):
    """A request stream: a message that cannot be parsed ends the stream with
    INVALID_ARGUMENT, as the same message sent to the unary method would end its call."""
    async def method(requests, context):
        async def parsed():
            async for request in requests:
                if isinstance(request, Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
                yield request
        async for response in fn(parsed(), context):
            yield response
    return method


def _tolerant_handler(h: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if h.request_deserializer is None or (h.request_streaming and h.stream_stream is None):
        return h
    guarded = {}
    if h.unary_unary is not None:
        guarded["unary_unary"] = _guard_unary(h.unary_unary)
    if h.unary_stream is not None:
        guarded["unary_stream"] = _guard_stream(h.unary_stream)
    if h.stream_stream is not None:
        guarded["stream_stream"] = _guard_bidi(h.stream_stream)
    return h._replace(request_deserializer=_tolerant_deserializer(h.request_deserializer),
                      **guarded)


class _Capture:
    """Stands in for the server while generated code registers its handlers."""

    def __init__(self):
        self.services: list[tuple[str, dict]] = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers arrive by add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.services.append((service, handlers))


def add_tolerant(add_to_server: Callable, servicer, server: grpc.aio.Server) -> None:
    """add_to_server: a generated add_*Servicer_to_server function."""
    capture = _Capture()
    add_to_server(servicer, capture)
    for service, handlers in capture.services:
        handlers = {name: _tolerant_handler(h) for name, h in handlers.items()}
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, handlers),))
        server.add_registered_method_handlers(service, handlers)
