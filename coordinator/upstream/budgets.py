"""Adaptive timeouts of upstream calls, and how long lockstep holds the others back for one.

Pure and synchronous; no grpc, no tensors.
"""

from __future__ import annotations


class LatencyBudget:
    """The timeout of one kind of call: fixed, or `factor` x the moving average of its recent
    latencies (at least `floor_s`; `initial_s` before the first sample). Calls of different
    sizes (a batched open of 8 prompts vs 1): pass each call's size (e.g. prompt tokens) and
    the average is kept per unit of size, the timeout scaled by the call's size.

    A call that timed out counts as taking its whole timeout for the next timeout (a slow
    service gets longer timeouts), but not for `expected()`, what an answered call takes: a
    hang says nothing about how long an answer takes, and a wait sized by it would grow with
    every timeout."""

    def __init__(self, fixed_s: float | None, floor_s: float, initial_s: float,
                 factor: float = 4.0, alpha: float = 0.2):
        self.fixed_s, self.floor_s, self.initial_s = fixed_s, floor_s, initial_s
        self.factor, self.alpha = factor, alpha
        self.mean_s: float | None = None  # per unit of size, timed-out calls included
        self.answered_mean_s: float | None = None  # per unit of size, answered calls only

    def timeout(self, size: float = 1.0) -> float:
        if self.fixed_s:
            return self.fixed_s
        if self.mean_s is None:
            return self.initial_s
        return max(self.floor_s, self.factor * self.mean_s * size)

    def expected(self, size: float = 1.0) -> float | None:
        """What an answered call of this size takes at the recent average (None before the
        first answer)."""
        return None if self.answered_mean_s is None else self.answered_mean_s * size

    def observe(self, seconds: float, size: float = 1.0, timed_out: bool = False) -> None:
        """A call's latency; timed_out: it got no answer within `seconds`, its timeout."""
        per_unit = seconds / max(size, 1.0)
        self.mean_s = self._average(self.mean_s, per_unit)
        if not timed_out:
            self.answered_mean_s = self._average(self.answered_mean_s, per_unit)

    def _average(self, mean: float | None, sample: float) -> float:
        return sample if mean is None else (1 - self.alpha) * mean + self.alpha * sample


OPEN_HOLD_MARGIN = 1.5  # an open holds the others back for up to 1.5x what it should take


def open_hold_s(propose: LatencyBudget, open_: LatencyBudget, tokens: int) -> float:
    """How long lockstep waits for a draft open (prefill) of `tokens` prompt tokens before
    the next call goes out alongside it: what answered opens of that size took lately (x the
    margin), at least one Propose budget; opens that timed out do not lengthen it
    (LatencyBudget.expected). (One Propose budget alone lets a large batched open run
    beside the target's verifies, two passes on shared cores at once, slowing both:
    docs/benchmarks.md#figures-behind-the-coordinators-rules.)"""
    expected = open_.expected(tokens)
    floor = propose.timeout()
    return floor if expected is None else max(floor, OPEN_HOLD_MARGIN * expected)
