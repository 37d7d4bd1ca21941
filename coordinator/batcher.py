"""Gathering the items of concurrent generations into batched Propose / Verify calls.

No timer: a lone session's item goes out at once. While a call is in flight, items of
other sessions queue; when it returns, everything queued (up to max_items) goes out as the
next call. The gathering window is therefore exactly one call's duration, and under load
every call carries all sessions that became ready meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class Batcher:
    def __init__(self, send: Callable[[list[Any]], Awaitable[Any]], max_items: int = 64):
        """send(items) performs one batched call and returns its reply, whose `results`
        match `items` one to one."""
        self._send = send
        self.max_items = max_items
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def submit(self, item: Any) -> tuple[Any, Any]:
        """Queue one item; returns (its result, the whole reply)."""
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[:self.max_items]
                del self._queue[:self.max_items]
                try:
                    reply = await self._send([item for item, _ in batch])
                except Exception as e:  # the whole call failed: every item gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for (_, future), result in zip(batch, reply.results, strict=True):
                    if not future.done():  # its generation may have been cancelled
                        future.set_result((result, reply))
        finally:
            self._task = None
