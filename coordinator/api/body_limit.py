"""The HTTP API's request-size limit (--max-request-bytes): a body past it gets 413 before the
app parses any of it, and at most the limit is ever held in memory."""

from __future__ import annotations

import json


class BodyLimit:
    """ASGI middleware: reads each request's body up to `limit` bytes (refusing a declared
    Content-Length past it at once), then hands the app the body it read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # (the client went away)
                return await self.app(scope, _replay([message], receive), send)
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._too_large(send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _too_large(self, send) -> None:
        message = (f"the request body exceeds --max-request-bytes {self.limit}; send a "
                   f"shorter prompt")
        payload = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                        "param": None, "code": 413}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list[dict], receive):
    """A receive() that returns `messages` first, then defers to the real one."""
    queue = list(messages)

    async def replay():
        return queue.pop(0) if queue else await receive()
    return replay
