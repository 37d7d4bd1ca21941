"""The fault-handling primitives on their own: deadlines, latency budgets, backoff, seeds,
and the session store's memory of closed ids."""

import asyncio

import pytest

from coordinator.generation.faults import Backoff, Deadline, derive_seed
from coordinator.upstream.budgets import LatencyBudget, open_hold_s
from specdec.errors import DeadlineExceeded, FailedPrecondition
from specdec.sessions import Session, SessionStore


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_deadline_counts_down_and_bounds_awaits():
    clock = Clock()
    d = Deadline(2.0, clock)
    assert d.remaining() == 2.0
    clock.now += 1.5
    assert d.remaining() == 0.5
    d.check()
    clock.now += 1
    with pytest.raises(DeadlineExceeded):
        d.check()
    assert Deadline(None).remaining() is None

    async def slow():
        await asyncio.sleep(5)

    with pytest.raises(DeadlineExceeded):
        asyncio.run(Deadline(0.05).bound(slow()))
    assert asyncio.run(Deadline(None).bound(asyncio.sleep(0, result=7))) == 7


def test_latency_budget_is_fixed_or_follows_recent_latency():
    assert LatencyBudget(0.3, floor_s=1, initial_s=2).timeout() == 0.3
    auto = LatencyBudget(None, floor_s=0.1, initial_s=2.0, factor=4, alpha=0.5)
    assert auto.timeout() == 2.0  # nothing measured yet
    auto.observe(0.2)
    assert auto.timeout() == pytest.approx(0.8)
    auto.observe(0.0)
    assert auto.timeout() == pytest.approx(0.4)
    for _ in range(20):
        auto.observe(0.001)
    assert auto.timeout() == 0.1  # never below the floor


def test_latency_budget_scales_with_the_size_of_a_call():
    """A batched open of 8 prompts may take 8 times one: the budget is kept per unit."""
    budget = LatencyBudget(None, floor_s=0.5, initial_s=10.0, factor=4, alpha=1.0)
    assert budget.timeout(800) == 10.0  # nothing measured yet
    budget.observe(0.3, size=100)  # one prompt of 100 tokens took 0.3 s
    assert budget.timeout(100) == pytest.approx(1.2)
    assert budget.timeout(800) == pytest.approx(9.6)
    assert budget.timeout(10) == 0.5  # the floor still holds


def test_lockstep_holds_a_draft_open_about_as_long_as_it_should_take():
    """A batched open of 800 prompt tokens, where one of 100 took 0.3 s, holds the other
    calls back 1.5 x 2.4 s (running the target beside it would slow both); never less than
    one Propose budget, nor more than the margin over what opens took lately."""
    propose = LatencyBudget(None, floor_s=1.0, initial_s=2.0)
    opens = LatencyBudget(None, floor_s=2.0, initial_s=10.0, alpha=1.0)
    assert open_hold_s(propose, opens, 800) == 2.0  # nothing measured: one Propose budget
    opens.observe(0.3, size=100)
    assert open_hold_s(propose, opens, 800) == pytest.approx(3.6)
    assert open_hold_s(propose, opens, 100) == 2.0


def test_backoff_doubles_up_to_its_cap_and_resets():
    clock = Clock()
    b = Backoff(0.5, 2.0, clock)
    assert b.ready()
    waits = []
    for _ in range(4):
        b.failed()
        waits.append(b.ready_at - clock.now)
        assert not b.ready()
    assert waits == [0.5, 1.0, 2.0, 2.0]
    clock.now += 2.0
    assert b.ready()
    b.reset()
    b.failed()
    assert b.ready_at - clock.now == 0.5


def test_reopened_sessions_get_fresh_distinct_seeds():
    assert derive_seed(42, 0) == 42
    seeds = {derive_seed(42, n) for n in range(1, 100)}
    assert len(seeds) == 99 and 42 not in seeds
    assert all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(42, 3) == derive_seed(42, 3) != derive_seed(43, 3)


def test_closed_ids_cannot_be_reopened():
    store = SessionStore(4, 60)
    store.add(Session("a", [1], None))
    store.pop("a")
    with pytest.raises(FailedPrecondition, match="was closed"):
        store.add(Session("a", [1], None))
    store.remember_closed("b")  # a close that overtook its open
    with pytest.raises(FailedPrecondition):
        store.add(Session("b", [1], None))
    store.add(Session("c", [1], None))
    assert len(store) == 1
