"""The target side of one generation (see legs.py): lost sessions are rebuilt, rounds whose
outcome was seen are resumed, never redrawn."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from specdec.errors import DeadlineExceeded, Unavailable

from ..upstream.clients import UpstreamError
from .legs import Leg, Request

log = structlog.get_logger(__name__)

DEADLINE_RESERVE_S = 0.1  # target calls give up this long before the request's deadline
# Waiting for an unreachable target stops this long before the request's deadline, so that
# the client reads UNAVAILABLE (the target is down) rather than its own DEADLINE_EXCEEDED,
# also when a busy event loop wakes the retry late.
RECOVER_RESERVE_S = 0.25
# Target failures recovered by re-opening the session from the history: the session is gone
# (restart), the service is unreachable or hung, or its view of the session diverged.
TARGET_RECOVERABLE = {"NOT_FOUND", "UNAVAILABLE", "DEADLINE_EXCEEDED", "FAILED_PRECONDITION",
                      "CANCELLED", "ABORTED"}


class NoAnswer(UpstreamError):
    """A target call still unanswered when the request's deadline (nearly) passed."""


@dataclass(frozen=True)
class Rejection:
    """A sampled rejection of proposals[accepted], revealed by the target: it draws the
    recovered token once it has the draft's q there (at the ids `query` names). Returned to
    the loop, which asks the draft and hands the answer back (TargetLeg.answer), or, with
    the draft gone, drops the round (TargetLeg.drop)."""
    proposals: list[int]
    probs: list[float]
    accepted: int
    query: object  # a target_pb2.DraftProbsQuery
    position: int  # the target session's, waiting for the answer


@dataclass
class Verified:
    """A round's outcome: `proposed` proposals were verified (0 if they were dropped), the
    first `accepted` kept, then `next_token` (the target's recovered or bonus token)."""
    proposed: int
    accepted: int
    next_token: int
    position: int


class TargetLeg(Leg):
    """The target session of one generation (see the module docstring)."""

    def __init__(self, pool, request: Request):
        super().__init__(pool, request)
        self.position = 0

    def _add_time(self, us: int) -> None:
        self.stats.verify_time_s += us / 1e6

    async def _bounded(self, awaitable):
        """Await a target call, giving up a little before the request's deadline so that a
        target that does not answer is reported as such (UNAVAILABLE, via _recover) rather
        than as the client's bare DEADLINE_EXCEEDED."""
        left = self.deadline.remaining()
        if left is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, max(0.0, left - DEADLINE_RESERVE_S))
        except TimeoutError:
            raise NoAnswer("DEADLINE_EXCEEDED",
                           f"{self.where}: no answer before the request's deadline") from None

    async def open(self, history: list[int]) -> None:
        """Open the session; a replica without room (RESOURCE_EXHAUSTED) passes it to the
        next one; while the target is unreachable, retry as _recover does."""
        full: frozenset = frozenset()
        while True:
            try:
                await self._open(history, self._bounded, avoid=full)
                break
            except UpstreamError as e:
                if e.code == "RESOURCE_EXHAUSTED" and self.client is not None and \
                        len(full) + 1 < len(self.pool.replicas):
                    full |= {self.client}
                    self._abandon()
                    continue
                await self._retry(history, e)
                break
        self.position = len(history)

    async def move(self, history: list[int]) -> None:
        """Re-open the session on another replica from the history (exact at a round
        boundary: no round is open); called when should_move."""
        old = self.client
        log.info("target replica drains; moving the session", replica=old.addr,
                 tokens=len(history))
        self._abandon()
        try:
            await self._open(history, self._bounded, avoid=frozenset({old}))
        except UpstreamError as e:
            await self._retry(history, e)
        self.position = len(history)
        self.stats.target_reopens += 1
        log.info("target session moved", session_id=self.session_id, replica=self.client.addr)

    @staticmethod
    def _check_recoverable(e: UpstreamError) -> None:
        if isinstance(e, NoAnswer):  # a working target, but the deadline is (nearly) over
            raise DeadlineExceeded(f"the request's deadline passed: {e}") from None
        if e.code not in TARGET_RECOVERABLE:
            raise e

    async def verify(self, history: list[int], proposals: list[int], probs: list[float]
                     ) -> Verified | Rejection:
        """Verify one round's proposals: the round's outcome, or a sampled Rejection the
        loop resolves with the draft (answer, or drop). If the target loses the session
        before any decision, it is re-opened from the history and the round redone."""
        while True:
            try:
                result = await self._call(self.position, proposals, probs)
                # (answer items report 0 accepted: they accept nothing new)
                return self._outcome(result, proposals, probs, result.num_accepted)
            except UpstreamError as e:
                await self._retry(history, e)

    async def answer(self, history: list[int], rejection: Rejection, answer: bytes
                     ) -> Verified | Rejection:
        """Answer a rejection's query with the draft's q. If the target loses the session, it
        is re-opened on history + the accepted proposals and the rejection resumed there
        (resume_rejected): a fault never turns into a fresh draw of a round whose outcome
        was already seen. Resumed, the target asks for q again (another Rejection)."""
        n = rejection.accepted
        call = self._call(rejection.position, [], [], answer)
        while True:
            try:
                return self._outcome(await call, rejection.proposals, rejection.probs, n)
            except UpstreamError as e:
                await self._retry(history + rejection.proposals[:n], e)
                call = self._call(self.position, [rejection.proposals[n]], [rejection.probs[n]],
                                  resume=True)

    async def drop(self, history: list[int], rejection: Rejection) -> Verified:
        """The draft is unreachable, and the recovered token cannot be drawn without its q:
        roll the session back to the history and redo the round target-only. Strictly, a
        round dropped *because* it had a rejection is not an exact draw (docs/operations.md);
        it takes the draft failing for good between this round's Propose and GetProbs, and
        is counted as reason "dropped_after_rejection"."""
        try:
            await self._bounded(
                self.client.truncate(self.session_id, rejection.position, len(history)))
            self.position = len(history)
        except UpstreamError as e:
            await self._retry(history, e)  # (a session re-opened on the history)
        self.stats.record_fallback("dropped_after_rejection")
        return await self.verify(history, [], [])

    def _outcome(self, result, proposals: list[int], probs: list[float], accepted: int
                 ) -> Verified | Rejection:
        if result.HasField("draft_probs_query"):
            return Rejection(proposals, probs, accepted, result.draft_probs_query,
                             result.position)
        self.position = result.position
        return Verified(len(proposals), accepted, result.next_token_id, result.position)

    async def _retry(self, history: list[int], cause: UpstreamError) -> None:
        """A call failed: re-open the session on `history` if the failure is recoverable."""
        self._check_recoverable(cause)
        await self._recover(history, cause)

    async def _call(self, position, proposals, probs, answer=None, resume=False):
        result, batch, nbytes = await self._bounded(self.client.verify(
            self.session_id, position, proposals, probs, answer, resume))
        self.stats.verify_time_s += batch.compute_time_us / 1e6
        self.stats.forward_time_s += batch.forward_time_us / 1e6
        self.stats.wire_bytes += nbytes
        if answer is None and not resume:
            self.stats.verify_batch_sessions += batch.batched_sessions
        return result

    async def _recover(self, history: list[int], cause: UpstreamError) -> None:
        """Re-open the session on the history, retrying while the target is unreachable."""
        give_up = time.monotonic() + self.policy.target_retry_s
        delay, last = 0.1, cause
        log.warning("target failed; (re-)opening its session from the history", code=cause.code,
                    error=str(cause), tokens=len(history))
        while True:
            self.deadline.check()
            failed = self.client
            if failed is not None and last.code != "NOT_FOUND":  # (NOT_FOUND: it restarted)
                self.pool.report_failure(failed)
            self._abandon()
            try:
                await self._open(history, self._bounded,
                                 avoid=frozenset({failed}) if failed else frozenset())
                self.position = len(history)
                self.stats.target_reopens += self.incarnation > 0
                log.info("target session re-opened", session_id=self.session_id,
                         replica=self.client.addr, tokens=len(history))
                return
            except UpstreamError as e:
                if e.code not in TARGET_RECOVERABLE:
                    raise
                if not isinstance(e, NoAnswer):
                    last = e
            left = give_up - time.monotonic()
            if left <= 0:
                raise Unavailable(
                    f"{self.where} did not come back within "
                    f"--target-retry-s {self.policy.target_retry_s:g}s: {last}") from None
            remaining = self.deadline.remaining()
            if remaining is not None and remaining < delay + RECOVER_RESERVE_S:
                raise Unavailable(
                    f"{self.where} is unreachable and the request's "
                    f"deadline leaves no time to wait for it: {last}") from None
            await asyncio.sleep(min(delay, left))
            delay = min(1.0, delay * 2)
