"""The two sides of one generation, each able to lose its service and carry on.

The coordinator holds every generation's full token history (prompt + every final token),
so a session lost on either service is rebuilt from it with one prefill:

- DraftLeg (draft_leg.py): a draft that is down, errs, or answers slower than its budget
  costs the round its proposals: the round runs target-only (K=0) and the leg tries again
  after a backoff, opening a fresh draft session on the history (or, after a timeout,
  re-synchronising the session it has). The output never depends on the draft.
- TargetLeg (target_leg.py): a target session that is gone (NOT_FOUND: the service
  restarted) or whose service is unreachable (UNAVAILABLE) is re-opened from the history and
  the round goes on, retrying for --target-retry-s (and never past the request's deadline);
  then the generation fails with UNAVAILABLE naming the target.

Re-opened sessions get a seed derived from the request's (faults.derive_seed), so sampling
after a fault draws fresh randomness; every token still comes from the target's
distribution given the history before it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import structlog

from specdec.sampling import SamplingParams

from ..upstream.background import Background
from .faults import Deadline, FaultPolicy, derive_seed
from .stats import Stats

log = structlog.get_logger(__name__)

def fallback_reason(err: Exception) -> str:
    """The `reason` label of a draft fallback: timeout, unavailable, resource_exhausted, …"""
    code = getattr(err, "code", "ERROR")
    return "timeout" if code == "DEADLINE_EXCEEDED" else str(code).lower()


@dataclass(frozen=True)
class Request:
    """What both legs of one generation share."""
    session_id: str
    sampling: SamplingParams
    max_tokens: int  # the most tokens a session holds (prompt + new tokens + K)
    deadline: Deadline
    stats: Stats  # where the legs count
    policy: FaultPolicy
    background: Background  # where work that outlives a call is kept


class Leg:
    """What both sides share: the session (re-)opened from the history, and closing it."""

    def __init__(self, pool, request: Request):
        """pool: the tier's upstream.replicas.ReplicaSet; each session is opened on the
        replica it picks and stays there (self.client) until it is lost or moved."""
        self.pool, self.base_id, self.sampling = pool, request.session_id, request.sampling
        self.max_tokens, self.deadline = request.max_tokens, request.deadline
        self.stats, self.policy, self.background = request.stats, request.policy, request.background
        self.client = None  # the replica holding the session (a ServiceClient)
        self.session_id: str | None = None
        self.incarnation = 0  # 0 = the first session, n = the n-th re-opened one

    @property
    def where(self) -> str:
        """The service, for messages: its replica's address, or the tier's replicas."""
        if self.client is not None and len(self.pool.replicas) <= 1:
            return f"{self.pool.role} service at {self.client.addr}"
        return f"{self.pool.role} service ({self.pool.describe()})"

    def _next_open(self, history: list[int], avoid: frozenset = frozenset(),
                   background: bool = False):
        """The OpenSession call of the next session (fresh id and seed after the first) on the
        replica the pool picks; returns (that client, the session id, the call's coroutine).
        Raises UpstreamError when the tier has no usable replica."""
        client = self.pool.pick(avoid)
        sid = self.base_id if self.incarnation == 0 else f"{self.base_id}-{self.incarnation}"
        sampling = self.sampling
        if not sampling.greedy and self.incarnation:
            sampling = dataclasses.replace(sampling,
                                           seed=derive_seed(sampling.seed, self.incarnation))
        return client, sid, client.open(sid, history, sampling, self.max_tokens, background)

    async def _open(self, history: list[int], bound=None, avoid: frozenset = frozenset()
                    ) -> None:
        client, sid, call = self._next_open(history, avoid)
        # Held from the start: an open that fails or is cancelled may still have happened
        # on the service, so closing (idempotent) must cover it too.
        self.client, self.session_id = client, sid
        _, reply = await (bound or self.deadline.bound)(call)
        self._add_time(reply.compute_time_us)

    @property
    def should_move(self) -> bool:
        """The session's replica drains (or left) and another is in rotation: move it at
        this round boundary."""
        return self.session_id is not None and self.pool.should_move(self.client)

    def _abandon(self) -> None:
        """Leave the current session (closed in the background); the next gets a new id."""
        if self.session_id is not None:
            self.client.close_later(self.session_id)
            self.session_id = None
            self.incarnation += 1

    def _add_time(self, us: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Close the session; if that fails, keep retrying in the background."""
        if self.session_id is not None:
            sid, self.session_id = self.session_id, None
            try:
                await self.client.close_session(sid)
            except Exception as e:
                log.info("closing a session failed; retrying in the background",
                         service=self.pool.role, error=str(e))
                self.client.close_later(sid)


__all__ = ["Leg", "Request", "fallback_reason"]
