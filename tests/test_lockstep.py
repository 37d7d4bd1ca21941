"""The lockstep dispatcher (coordinator.upstream.batcher) on real asyncio with stand-in services:
one call at a time, a held call (a draft's open) that outlasts its hold goes on alongside
the next calls, and items sent from background tasks take their turns and leave the count
of running generations balanced."""

import asyncio
import contextlib
import time
from types import SimpleNamespace

from coordinator.upstream.batcher import Batcher, Scheduler


class Service:
    """A stand-in service method: each call takes `seconds`; records calls in flight."""

    def __init__(self, name: str, log: list, seconds: float = 0.01):
        self.name, self.log, self.seconds = name, log, seconds
        self.in_flight = 0

    async def send(self, items):
        self.in_flight += 1
        self.log.append((time.monotonic(), self.name, "start", list(items)))
        await asyncio.sleep(self.seconds)
        self.in_flight -= 1
        self.log.append((time.monotonic(), self.name, "end", list(items)))
        return SimpleNamespace(results=[f"{self.name}:{i}" for i in items])


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler):
    """One generation's span: counted running from begin() to end()."""
    scheduler.begin()
    try:
        yield
    finally:
        scheduler.end()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def opens_and_verifies(log: list, open_s: float, hold_s: float | None = None,
                       quiet_timeout_s: float = 0.02):
    """An open batcher (calls of open_s, held for at most hold_s) and a verify batcher
    (10 ms calls) under one Scheduler: (opens, verifies, scheduler)."""
    o = Batcher(Service("open", log, open_s).send)
    v = Batcher(Service("verify", log, 0.01).send)
    if hold_s is not None:
        o.hold_s = lambda items: hold_s
    return o, v, Scheduler([o, v], quiet_timeout_s=quiet_timeout_s)


def most_in_flight(log: list) -> int:
    """The most calls in flight at once over a log of Service calls."""
    depth, most = 0, 0
    for _, _, what, _ in sorted(log):
        depth += 1 if what == "start" else -1
        most = max(most, depth)
    return most


def test_one_call_at_a_time_across_batchers():
    async def main():
        log = []
        draft, target = Service("draft", log), Service("target", log)
        d, t = Batcher(draft.send), Batcher(target.send)
        scheduler = Scheduler([d, t])

        async def generation(i):
            async with running(scheduler):
                for _ in range(3):
                    await d.submit(i)
                    await t.submit(i)

        await asyncio.gather(*(generation(i) for i in range(4)))
        return log, scheduler

    log, scheduler = run(main())
    assert most_in_flight(log) == 1
    starts = [items for _, name, what, items in log if what == "start"]
    assert all(len(items) == 4 for items in starts)  # every call batched all generations
    assert len(starts) == 6 and scheduler.running == 0


def test_a_held_call_goes_on_alongside_after_its_hold():
    """A slow open (2 s) held for at most 0.1 s: the other generation's five calls (10 ms
    each) go out meanwhile and end before it; the opener runs again when its open ends."""
    async def main():
        o, v, scheduler = opens_and_verifies([], 2.0, hold_s=0.1)
        done = {}

        async def opener():
            async with running(scheduler):
                await o.submit("a")
                done["opener"] = time.monotonic()

        async def verifier():
            async with running(scheduler):
                await asyncio.sleep(0.01)  # (the open is queued first)
                for _ in range(5):
                    await v.submit("b")
                done["verifier"] = time.monotonic()

        began = time.monotonic()
        await asyncio.gather(opener(), verifier())
        return began, done, scheduler

    began, done, scheduler = run(main())
    assert done["verifier"] < done["opener"]  # it did not wait for the open
    assert done["opener"] - began >= 2.0
    assert scheduler.running == 0


def test_a_held_call_within_its_hold_keeps_the_turns():
    async def main():
        log = []
        o, v, scheduler = opens_and_verifies(log, 0.05, hold_s=5.0)

        async def generation(i):
            async with running(scheduler):
                await o.submit(i)
                await v.submit(i)

        await asyncio.gather(*(generation(i) for i in range(3)))
        return log, scheduler

    log, scheduler = run(main())
    order = [(name, what) for _, name, what, _ in sorted(log)]
    assert order == [("open", "start"), ("open", "end"), ("verify", "start"),
                     ("verify", "end")]
    assert scheduler.running == 0


QUIET_TIMEOUT_S = 10.0


def test_background_items_leave_the_running_count_balanced():
    """A generation that sends an item from a background task (a draft re-open, a deferred
    open) while it goes on: the item still takes its turn (never alongside another call),
    the dispatcher still waits for the generation's own item, and the count of running
    generations ends at 0 (a miscount stalls every round by the quiet timeout, or sends
    rounds half-batched)."""
    async def main():
        log = []
        o, v, scheduler = opens_and_verifies(log, 0.02, quiet_timeout_s=QUIET_TIMEOUT_S)
        counts = []

        async def generation(i):
            async with running(scheduler):
                background = asyncio.ensure_future(o.submit(f"re{i}", counted=False))
                for _ in range(3):
                    await v.submit(i)
                    counts.append(scheduler.running)
                await background

        began = time.monotonic()
        await asyncio.gather(*(generation(i) for i in range(3)))
        return time.monotonic() - began, counts, scheduler, log

    took, counts, scheduler, log = run(main())
    assert scheduler.running == 0 and min(counts) >= 0
    assert most_in_flight(log) == 1  # one call at a time, background items included
    opens = [items for _, name, what, items in log if name == "open" and what == "start"]
    assert opens == [["re0", "re1", "re2"]]  # (batched, in one turn)
    # never waited out the quiet timeout for a generation miscounted (the calls themselves
    # take ~0.1 s; a third of the quiet timeout leaves a slow machine a wide margin)
    assert took < QUIET_TIMEOUT_S / 3
