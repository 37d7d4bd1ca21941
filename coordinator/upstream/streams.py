"""One long-lived gRPC stream per method and connection, carrying that method's calls.

A unary call per round costs a round its own HTTP/2 stream (headers, deadline, trailers,
and on the Python side a call object and its callbacks); a message on a stream that is
already open costs far less. The services answer every message of a ProposeStream or
VerifyStream as the unary method would answer it, in order, so calls go out one at a time
and the n-th reply belongs to the n-th request.

Any failure (an error status, a timeout, a cancelled caller) leaves the stream's order
uncertain, so the stream is cancelled and the next call opens a fresh one. The caller sees
the failure as the grpc.aio.AioRpcError a unary call would have raised; calls name their
expected positions, so repeating one (on a new stream or as a unary call) is safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc


class MessageStream:
    def __init__(self, open_stream: Callable[[], grpc.aio.StreamStreamCall]):
        """open_stream(): a new call of the stub's stream method (no deadline: it lives on)."""
        self._open = open_stream
        self._call: grpc.aio.StreamStreamCall | None = None
        self._lock = asyncio.Lock()  # one request in flight: replies match by order

    async def call(self, request, timeout: float | None):
        """Send `request` and return its reply, as a unary call with `timeout` would.
        Raises grpc.aio.AioRpcError (DEADLINE_EXCEEDED when no reply came in time)."""
        async with self._lock:
            if self._call is None:
                self._call = self._open()
            call = self._call
            try:
                async with asyncio.timeout(timeout):
                    await call.write(request)
                    reply = await call.read()
            except TimeoutError:
                self.reset()
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, details="Deadline Exceeded") from None
            except asyncio.InvalidStateError:  # written to a stream that had ended
                self.reset()
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE,
                                           details="the stream had ended") from None
            except BaseException:
                self.reset()
                raise
            if reply is grpc.aio.EOF:  # the service ended the stream without a status
                self.reset()
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE,
                                           details="the stream ended; a new one will be opened")
            return reply

    def reset(self) -> None:
        """Cancel the stream (if any); the next call opens a new one."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
