"""What a batched upstream call cost, as the clients measure it: one dataclass per kind of
call, reported through ServiceClient.on_cost (the K policy, speculation.adaptive, learns from
them). Seconds are the services' own compute times, not wall-clock round trips."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProposeCall:
    """A Propose call for `sessions` items that asked for up to `steps` proposals each."""
    sessions: int
    steps: int
    seconds: float  # its compute; for a call that timed out, the timeout it exceeded
    timed_out: bool = False
    catch_up: int = 0  # the most tokens an item appended beyond the one a round leaves


@dataclass(frozen=True)
class VerifyCall:
    """A Verify call's pass over `sessions` items and `rows` rows (proposals + 1 each;
    items that only answer a draft-probabilities query need no pass and are not counted)."""
    sessions: int
    rows: int
    seconds: float


@dataclass(frozen=True)
class PrefillCall:
    """A draft OpenSession call that prefilled `tokens` prompt tokens (all its items)."""
    tokens: int
    seconds: float


CostEvent = ProposeCall | VerifyCall | PrefillCall
