"""Mapping domain errors to gRPC statuses, and the per-RPC wrapper every servicer method uses."""

from __future__ import annotations

import functools
import time

import grpc
import structlog

from ..errors import SpecdecError

log = structlog.get_logger(__name__)


def status_code(err: SpecdecError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.code)


def item_status(err: SpecdecError | None) -> dict:
    """The code/message fields of one item of a batched reply (OK when err is None)."""
    if err is None:
        return {"code": grpc.StatusCode.OK.value[0]}
    return {"code": status_code(err).value[0], "message": str(err)}


def code_name(code: int) -> str:
    """The StatusCode name of a numeric code carried in a batched reply's item."""
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), f"CODE_{code}")


def rpc_method(fn):
    """Wrap a grpc.aio unary servicer method.

    Binds the request's session id (if any) to the log context, turns SpecdecError into its
    status code with the error's message, and logs unexpected exceptions with their
    traceback before answering INTERNAL (only those: known failures keep their own code).
    """

    @functools.wraps(fn)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        session_id = getattr(request, "session_id", "")
        start = time.perf_counter()
        with structlog.contextvars.bound_contextvars(rpc=fn.__name__, session_id=session_id):
            try:
                response = await fn(self, request, context)
            except SpecdecError as e:
                log.info("rpc rejected", code=e.code, error=str(e))
                await context.abort(status_code(e), str(e))
            except Exception as e:
                log.exception("rpc failed")
                await context.abort(grpc.StatusCode.INTERNAL,
                                    f"{fn.__name__} failed: {type(e).__name__}: {e}")
            log.debug("rpc", elapsed_ms=round((time.perf_counter() - start) * 1e3, 3))
            return response

    return wrapper
