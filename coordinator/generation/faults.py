"""Fault-handling primitives of the decode loop: deadlines, backoff, fresh seeds.

Pure and synchronous apart from `Deadline.bound`; no grpc, no tensors.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from specdec.errors import DeadlineExceeded

T = TypeVar("T")


@dataclass(frozen=True)
class FaultPolicy:
    """How a generation reacts to its services failing (coordinator flags)."""

    target_retry_s: float = 30.0  # re-open a lost target session for at most this long
    draft_retry_initial_s: float = 0.5  # first wait before re-opening a lost draft session
    draft_retry_max_s: float = 8.0  # the wait doubles per failure up to this


class Deadline:
    """The request's deadline (the client's gRPC deadline), on the monotonic clock."""

    def __init__(self, remaining_s: float | None, clock=time.monotonic):
        self._clock = clock
        self.at = None if remaining_s is None else clock() + remaining_s

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - self._clock()

    def check(self) -> None:
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("the request's deadline passed before generation finished")

    async def bound(self, awaitable: Awaitable[T]) -> T:
        """Await within the remaining time; DeadlineExceeded when it runs out."""
        left = self.remaining()
        if left is None:
            return await awaitable
        if left <= 0:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            self.check()
        try:
            return await asyncio.wait_for(awaitable, left)
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed before generation "
                                   "finished") from None


class Backoff:
    """Exponential backoff between retries: failed() pushes the next try out."""

    def __init__(self, initial_s: float, max_s: float, clock=time.monotonic):
        self.initial_s, self.max_s, self._clock = initial_s, max_s, clock
        self.delay_s = initial_s
        self.ready_at = 0.0

    def ready(self) -> bool:
        return self._clock() >= self.ready_at

    def failed(self) -> None:
        self.ready_at = self._clock() + self.delay_s
        self.delay_s = min(self.max_s, self.delay_s * 2)

    def reset(self) -> None:
        self.delay_s, self.ready_at = self.initial_s, 0.0


def derive_seed(seed: int, incarnation: int) -> int:
    """The seed of a session re-opened after a fault: a fresh random stream, so the draws
    after the fault are independent of those before it (reusing the seed would replay
    them at other positions). Incarnation 0 is the request's own seed."""
    if incarnation == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{incarnation}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
