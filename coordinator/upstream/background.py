"""Work left running against the services after the call that started it returned: sessions
being closed (a client's close_later; a generation's cleanup after a failure or a cancel, the
caller answered at once), a draft session re-opening in the background."""

from __future__ import annotations

import asyncio


class Background:
    """Holds each task until it ends (the event loop holds tasks weakly)."""

    def __init__(self):
        self._tasks: set[asyncio.Task] = set()

    def keep(self, task: asyncio.Task) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def tasks(self) -> list[asyncio.Task]:
        return list(self._tasks)

    async def settle(self, grace_s: float = 2.0) -> None:
        """At shutdown: give the tasks up to grace_s to end, then cancel the rest (the
        services' session TTL is the backstop)."""
        if not self:
            return
        _, left = await asyncio.wait(self.tasks, timeout=grace_s)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
