"""Serving an ASGI app with uvicorn on the coordinator's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

import uvicorn

from specdec.errors import Unavailable


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        """The coordinator owns SIGTERM/SIGINT (it drains both of its APIs)."""
        yield


@dataclass
class HttpServer:
    server: _Server
    task: asyncio.Task
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start_http(app, host: str, port: int) -> HttpServer:
    """Start serving; port 0 binds any free port (see .port). The socket is bound here, so a
    busy port is a clear error rather than uvicorn's exit."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise Unavailable(f"cannot bind HTTP {host}:{port} (in use?): {e}") from None
    sock.listen(1024)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                            timeout_graceful_shutdown=5)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            raise Unavailable(f"HTTP server on {host}:{port} did not start: "
                              f"{task.exception()}")
        await asyncio.sleep(0.01)
    return HttpServer(server, task, sock.getsockname()[1])
