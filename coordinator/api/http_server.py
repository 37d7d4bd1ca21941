"""Serving an ASGI app with uvicorn on the coordinator's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

import uvicorn

from specdec.errors import Unavailable
from specdec.rpc.tls import warn_if_exposed


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


async def start_http(app, host: str, port: int, cert_file: str = "", key_file: str = ""
                     ) -> HttpServer:
    """Start serving (HTTPS with cert_file and key_file); port 0 binds any free port (see
    .port). The socket is bound here, so a busy port is a clear error rather than uvicorn's
    exit."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise Unavailable(f"cannot bind HTTP {host}:{port} (in use?): {e}") from None
    sock.listen(1024)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                            timeout_graceful_shutdown=5, ssl_certfile=cert_file or None,
                            ssl_keyfile=key_file or None)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            raise Unavailable(f"HTTP server on {host}:{port} did not start: "
                              f"{task.exception()}")
        await asyncio.sleep(0.01)
    warn_if_exposed(host, "the HTTP API", bool(cert_file))
    return HttpServer(server, task, sock.getsockname()[1])
