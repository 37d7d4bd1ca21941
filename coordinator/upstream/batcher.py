"""Gathering the items of concurrent generations into batched service calls.

Two policies:

- "lockstep" (default): one call at a time across both services, sent once every active
  generation has parked its next item in some queue (or after `quiet_timeout_s`, so a slow
  client cannot stall the others). Generations then move in rounds: all proposals in one
  Propose pass, all verifications in one Verify pass. The draft and the target take turns,
  which is fastest where they share CPU cores, and batches are as large as they can be.
- "pipelined": each method sends on its own as soon as its previous call returns, so the
  draft can work on some sessions while the target verifies others (overlap where each has
  its own GPU, at the price of smaller batches). Use it with replica sets too: lockstep
  sends one call at a time across every replica of both tiers.

Neither adds latency for a lone session: with nothing else active its item goes out at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

_arrivals = itertools.count()


class Batcher:
    """A queue of items for one batched method of one service."""

    def __init__(self, send: Callable[[list[Any]], Awaitable[Any]], max_items: int = 64):
        """send(items) performs one batched call and returns its reply, whose `results`
        match `items` one to one."""
        self._send = send
        self.max_items = max_items
        # (arrival, item, future, counted: its generation waits on it, see Scheduler.park)
        self.queue: list[tuple[int, Any, asyncio.Future, bool]] = []
        self.scheduler: Scheduler | None = None
        # lockstep: the most seconds the dispatcher waits for this batcher's call (given its
        # items) before it sends the next (the call goes on alongside); None = wait for it
        self.hold_s: Callable[[list[Any]], float] | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, item: Any, counted: bool = True) -> tuple[Any, Any]:
        """Queue one item; returns (its result, the whole reply). counted=False: sent from
        a background task while its generation goes on (lockstep must not wait for that
        generation to park, nor count it running again when the item returns); it still
        goes out in its turn."""
        future = asyncio.get_running_loop().create_future()
        self.queue.append((next(_arrivals), item, future, counted))
        if self.scheduler is not None:
            if counted:
                return await self.scheduler.park(future)
            self.scheduler.wake()
            return await future
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return await future

    async def flush_once(self) -> int:
        """Send up to max_items queued items as one call; resolve their futures. Returns
        how many counted futures were resolved (their generations run again)."""
        batch = self.queue[:self.max_items]
        del self.queue[:self.max_items]
        try:
            reply = await self._send([item for _, item, _, _ in batch])
        except Exception as e:  # the whole call failed: every item gets the error
            woken = 0
            for _, _, future, counted in batch:
                if not future.done():
                    future.set_exception(e)
                    woken += counted
            return woken
        woken = 0
        for (_, _, future, counted), result in zip(batch, reply.results, strict=True):
            if not future.done():  # its generation may have been cancelled
                future.set_result((result, reply))
                woken += counted
        return woken

    async def _drain(self) -> None:
        try:
            while self.queue:
                await self.flush_once()
        finally:
            self._task = None


class Scheduler:
    """Lockstep dispatch for a set of Batchers (see the module docstring).

    `running` counts generations executing coordinator code, i.e. not parked on a queued
    item: begin()/end() bracket a generation, park() parks it until its item's result."""

    def __init__(self, batchers: list[Batcher], quiet_timeout_s: float = 0.02):
        self.batchers: list[Batcher] = []
        self.add(batchers)
        self.quiet_timeout_s = quiet_timeout_s
        self.running = 0
        self.active = 0  # generations between begin() and end()
        self._changed = asyncio.Event()
        self._held: set[asyncio.Task] = set()  # calls held past their batcher's hold_s
        self._task: asyncio.Task | None = None

    def add(self, batchers: list[Batcher]) -> None:
        """Dispatch these batchers too (a replica joined)."""
        for b in batchers:
            b.scheduler = self
            self.batchers.append(b)

    def remove(self, batchers: list[Batcher]) -> None:
        """Stop dispatching these (a replica left; its queues are empty)."""
        self.batchers = [b for b in self.batchers if b not in batchers]

    def begin(self) -> None:
        self.running += 1
        self.active += 1

    def end(self) -> None:
        self.active -= 1
        self._add(-1)

    def wake(self) -> None:
        """An item was queued that no generation parks on: dispatch it in its turn."""
        self._add(0)

    def _add(self, n: int) -> None:
        self.running += n
        self._changed.set()
        if self._task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # a cleanup finishing as its loop shuts down: nothing to send
                return
            self._task = loop.create_task(self._dispatch())

    async def park(self, future: asyncio.Future):
        self._add(-1)
        try:
            return await future
        except asyncio.CancelledError:
            # The generation runs again (its cleanup, or code that timed the wait out). If
            # the item was resolved, the dispatcher already counted it running; if not, the
            # wait was cancelled and nobody did.
            if not future.done() or future.cancelled():
                self._add(1)
            raise

    async def _dispatch(self) -> None:
        try:
            while any(b.queue for b in self.batchers):
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.quiet_timeout_s
                while self.running > 0 and loop.time() < deadline:
                    self._changed.clear()
                    try:
                        await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
                    except TimeoutError:
                        break
                ready = [b for b in self.batchers if b.queue]
                if not ready:
                    continue
                oldest = min(ready, key=lambda b: b.queue[0][0])
                if oldest.hold_s is None:
                    woken = await oldest.flush_once()  # (not `running += await`: read after)
                    self.running += woken
                else:
                    items = [item for _, item, _, _ in oldest.queue[:oldest.max_items]]
                    await self._flush_held(oldest, oldest.hold_s(items))
                await asyncio.sleep(0)  # let the woken generations run
        finally:
            self._task = None

    async def _flush_held(self, batcher: Batcher, hold_s: float) -> None:
        """Send batcher's call and wait for it at most hold_s; past that it goes on alongside
        the next calls and its generations run again when it ends."""
        call = asyncio.ensure_future(batcher.flush_once())
        done, _ = await asyncio.wait({call}, timeout=hold_s)
        if call in done:
            self.running += call.result()
        else:
            self._held.add(call)  # (the loop holds tasks weakly)
            call.add_done_callback(self._held.discard)
            call.add_done_callback(lambda c: self._add(0 if c.cancelled() else c.result()))
