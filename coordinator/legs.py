"""The two sides of one generation, each able to lose its service and carry on.

The coordinator holds every generation's full token history (prompt + every final token),
so a session lost on either service is rebuilt from it with one prefill:

- DraftLeg: a draft that is down, errs, or answers slower than its budget costs the round
  its proposals: the round runs target-only (K=0) and the leg tries again after a backoff,
  opening a fresh draft session on the history. The output never depends on the draft.
- TargetLeg: a target session that is gone (NOT_FOUND: the service restarted) or whose
  service is unreachable (UNAVAILABLE) is re-opened from the history and the round is redone,
  retrying for --target-retry-s (and never past the request's deadline); then the
  generation fails with UNAVAILABLE naming the target.

Re-opened sessions get a seed derived from the request's (faults.derive_seed), so sampling
after a fault draws fresh randomness; every token still comes from the target's
distribution given the history before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

import structlog

from specdec.errors import DeadlineExceeded, Unavailable

from .faults import Backoff, Deadline, FaultPolicy, derive_seed
from .stats import Stats
from .upstream import UpstreamError

log = structlog.get_logger(__name__)

DEADLINE_RESERVE_S = 0.1  # target calls give up this long before the request's deadline
# Target failures recovered by re-opening the session from the history: the session is gone
# (restart), the service is unreachable or hung, or its view of the session diverged.
TARGET_RECOVERABLE = {"NOT_FOUND", "UNAVAILABLE", "DEADLINE_EXCEEDED", "FAILED_PRECONDITION",
                      "CANCELLED", "ABORTED"}


def fallback_reason(err: Exception) -> str:
    """The `reason` label of a draft fallback: timeout, unavailable, resource_exhausted, …"""
    code = getattr(err, "code", "ERROR")
    return "timeout" if code == "DEADLINE_EXCEEDED" else str(code).lower()


class _Leg:
    def __init__(self, client, session_id: str, sampling, max_tokens: int, deadline: Deadline,
                 stats: Stats):
        self.client, self.base_id, self.sampling = client, session_id, sampling
        self.max_tokens, self.deadline, self.stats = max_tokens, deadline, stats
        self.session_id: str | None = None
        self.incarnation = 0  # 0 = the first session, n = the n-th re-opened one

    def _next_open(self, history: list[int]):
        """The OpenSession call of the next session (fresh id and seed after the first);
        returns (its session id, the call's coroutine)."""
        sid = self.base_id if self.incarnation == 0 else f"{self.base_id}-{self.incarnation}"
        sampling = self.sampling
        if not sampling.greedy and self.incarnation:
            sampling = dataclasses.replace(sampling,
                                           seed=derive_seed(sampling.seed, self.incarnation))
        return sid, self.client.open(sid, history, sampling, self.max_tokens)

    async def _open(self, history: list[int], bound=None) -> None:
        sid, call = self._next_open(history)
        # Held from the start: an open that fails or is cancelled may still have happened
        # on the service, so closing (idempotent) must cover it too.
        self.session_id = sid
        _, reply = await (bound or self.deadline.bound)(call)
        self._add_time(reply.compute_time_us)

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
                         service=self.client.role, error=str(e))
                self.client.close_later(sid)


class DraftLeg(_Leg):
    """The draft session of one generation, or its absence (see the module docstring)."""

    def __init__(self, client, session_id: str, sampling, max_tokens: int, deadline: Deadline,
                 stats: Stats, policy: FaultPolicy):
        super().__init__(client, session_id, sampling, max_tokens, deadline, stats)
        self.backoff = Backoff(policy.draft_retry_initial_s, policy.draft_retry_max_s)
        self.reason = ""  # why the draft is missing, while it is
        self.position = 0  # tokens the draft session holds (final + last proposals)
        self.keep: int | None = None  # where it must roll back to on the next Propose
        self.append: list[int] = []  # final tokens it has not seen yet
        self._reopening: asyncio.Task | None = None  # a re-open under way

    def _add_time(self, us: int) -> None:
        self.stats.draft_time_s += us / 1e6

    async def open(self, history: list[int]) -> bool:
        """Open the first draft session on the prompt; False if the draft failed."""
        try:
            await self._open(history)
        except UpstreamError as e:
            self._lost(e)
            return False
        self.position = len(history)
        return True

    def _start_reopen(self, history: list[int]) -> None:
        """Re-open in the background: rounds go on target-only meanwhile, and the session
        catches up on the tokens final since (`append`) at its first Propose."""
        self.incarnation += 1  # every attempt gets its own id: a failed one may linger
        sid, call = self._next_open(list(history))

        async def reopen():
            _, reply = await call
            return sid, len(history), reply
        self._reopening = asyncio.get_running_loop().create_task(reopen())
        self.client.keep_task(self._reopening)
        self._reopening_id = sid

    def _adopt_reopened(self, history: list[int]) -> None:
        task, self._reopening = self._reopening, None
        try:
            sid, length, reply = task.result()
        except Exception as e:
            self._lost(e, attempted=self._reopening_id)
            return
        self.session_id, self.position, self.keep = sid, length, None
        self.append = history[length:]
        self._add_time(reply.compute_time_us)
        self.stats.draft_reopens += 1
        self.backoff.reset()
        log.info("draft session re-opened; speculation resumes", session_id=sid,
                 tokens=length, after=self.reason)
        self.reason = ""

    async def propose(self, history: list[int], k: int) -> tuple[list[int], list[float]]:
        """K proposals and q of each; ([], []) when the draft is missing (a fallback round)."""
        if self.session_id is None:
            if self._reopening is None and self.backoff.ready():
                self._start_reopen(history)
            if self._reopening is not None and self._reopening.done():
                self._adopt_reopened(history)
            if self.session_id is None:
                self.stats.record_fallback(self.reason)
                return [], []
        try:
            proposal, batch, nbytes = await self.deadline.bound(self.client.propose(
                self.session_id, self.position, self.keep, self.append, k))
        except UpstreamError as e:
            self._lost(e)
            self.stats.record_fallback(self.reason)
            return [], []
        self.stats.draft_time_s += batch.compute_time_us / 1e6
        self.stats.wire_bytes += nbytes
        self.position = proposal.position
        return list(proposal.token_ids), list(proposal.draft_probs)

    async def probs(self, query, index: int) -> bytes | None:
        """q at `index` of the last proposal, at the ids a target's DraftProbsQuery names;
        None if the draft failed."""
        if self.session_id is None:
            return None
        try:
            answer, nbytes = await self.deadline.bound(
                self.client.get_probs(self.session_id, self.position, index, query))
        except UpstreamError as e:
            self._lost(e)
            return None
        self.stats.wire_bytes += nbytes
        return answer

    async def recompute_probs(self, prefix: list[int], query, attempts: int = 3
                              ) -> bytes | None:
        """q after `prefix` at the ids `query` names, from a fresh draft session: the draft's
        distribution at a position depends on the prefix alone, so when the session that
        proposed is lost, a new one on the same prefix gives the same row (up to floating-
        point rounding). None if the draft cannot be reached in `attempts` tries."""
        for attempt in range(attempts):
            self.incarnation += 1
            sid, call = self._next_open(prefix)
            try:
                await self.deadline.bound(call)
                proposal, _, _ = await self.deadline.bound(
                    self.client.propose(sid, len(prefix), None, [], 1))
                answer, nbytes = await self.deadline.bound(
                    self.client.get_probs(sid, proposal.position, 0, query))
                self.stats.wire_bytes += nbytes
                return answer
            except UpstreamError as e:
                log.info("re-computing the draft's probabilities failed", error=str(e),
                         attempt=attempt + 1)
                await asyncio.sleep(0.1 * (attempt + 1))
            finally:
                self.client.close_later(sid)
        return None

    def commit(self, proposed: int, accepted: int, new_tokens: list[int]) -> None:
        """A round ended: `proposed` proposals, `accepted` of them kept, `new_tokens` final."""
        if self.session_id is None:
            return
        if proposed:
            self.keep = self.position - proposed + accepted
            self.append = [new_tokens[-1]]
        else:
            self.append.extend(new_tokens)

    async def close(self) -> None:
        if self._reopening is not None:
            # A re-open under way: close its session once it ends, whatever the answer (an
            # open whose reply was lost may still have happened; closing is idempotent).
            client, sid = self.client, self._reopening_id
            self._reopening.add_done_callback(lambda _: client.close_later(sid))
            self._reopening = None
        if self.session_id is not None:  # in the background: a slow draft delays nothing
            self.client.close_later(self.session_id)
            self.session_id = None

    def _lost(self, err: Exception, attempted: str | None = None) -> None:
        """The draft failed: drop its session (and `attempted`, an open that failed but may
        have happened on the service) and wait a backoff before trying again."""
        self.reason = fallback_reason(err)
        log.warning("draft lost; continuing target-only", reason=self.reason, error=str(err),
                    retry_in_s=round(self.backoff.delay_s, 3))
        if attempted is not None:
            self.client.close_later(attempted)
        self._abandon()
        self.backoff.failed()


class NoAnswer(UpstreamError):
    """A target call still unanswered when the request's deadline (nearly) passed."""


@dataclass
class Verified:
    """A round's outcome: `proposed` proposals were verified (0 if they were dropped), the
    first `accepted` kept, then `next_token` (the target's recovered or bonus token)."""
    proposed: int
    accepted: int
    next_token: int
    position: int


class TargetLeg(_Leg):
    """The target session of one generation (see the module docstring)."""

    def __init__(self, client, session_id: str, sampling, max_tokens: int, deadline: Deadline,
                 stats: Stats, policy: FaultPolicy):
        super().__init__(client, session_id, sampling, max_tokens, deadline, stats)
        self.policy = policy
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
                           f"target service at {self.client.addr}: no answer before the "
                           f"request's deadline") from None

    async def open(self, history: list[int]) -> None:
        """Open the session; while the target is unreachable, retry as _recover does."""
        try:
            await self._open(history, self._bounded)
        except UpstreamError as e:
            self._check_recoverable(e)
            await self._recover(history, e)
        self.position = len(history)

    @staticmethod
    def _check_recoverable(e: UpstreamError) -> None:
        if isinstance(e, NoAnswer):  # a working target, but the deadline is (nearly) over
            raise DeadlineExceeded(f"the request's deadline passed: {e}") from None
        if e.code not in TARGET_RECOVERABLE:
            raise e

    async def verify(self, history: list[int], proposals: list[int], probs: list[float],
                     draft: DraftLeg | None) -> Verified:
        """Verify one round's proposals. If the target loses the session, re-open it from
        the history and go on: before any decision, the round is redone; after a revealed
        rejection of proposals[n], the session is re-opened on history + proposals[:n] and
        the recovered token is drawn there (resume_rejected), so a fault never turns into a
        fresh draw of a round whose outcome was already seen."""
        rejected: list[int] = []  # [n] once a rejection of proposals[n] has been seen
        while True:
            try:
                return await self._verify(history, proposals, probs, draft, rejected)
            except UpstreamError as e:
                self._check_recoverable(e)
                await self._recover(history + proposals[:rejected[0]] if rejected else history,
                                    e)

    async def _verify(self, history, proposals, probs, draft: DraftLeg | None,
                      rejected: list[int]) -> Verified:
        if rejected:  # resume on a re-opened session holding the accepted prefix
            accepted = rejected[0]
            result = await self._call(self.position, [proposals[accepted]], [probs[accepted]],
                                      resume=True)
        else:
            result = await self._call(self.position, proposals, probs)
            accepted = result.num_accepted  # (answer items report 0: they accept nothing new)
            if result.HasField("draft_probs_query"):
                rejected.append(accepted)
        while result.HasField("draft_probs_query"):  # sampled rejection: fetch q for it
            answer = await draft.probs(result.draft_probs_query, accepted)
            if answer is None:  # the session that proposed is lost: recompute its q
                answer = await draft.recompute_probs(history + proposals[:accepted],
                                                     result.draft_probs_query)
            if answer is None:
                # The draft is unreachable, and the recovered token cannot be drawn without
                # its q: drop the round and redo it target-only. Strictly, a round dropped
                # *because* it had a rejection is not an exact draw (docs/operations.md); it
                # takes the draft failing for good between this round's Propose and
                # GetProbs, and is logged and counted as reason "dropped_after_rejection".
                log.warning("round dropped after a sampled rejection: the draft is gone",
                            reason=draft.reason)
                await self._bounded(
                    self.client.truncate(self.session_id, result.position, len(history)))
                self.stats.record_fallback("dropped_after_rejection")
                proposals, accepted = [], 0
                self.position = len(history)
                rejected.clear()
                result = await self._call(self.position, [], [])
                break
            result = await self._call(result.position, [], [], answer)
        self.position = result.position
        return Verified(len(proposals), accepted, result.next_token_id, result.position)

    async def _call(self, position, proposals, probs, answer=None, resume=False):
        result, batch, nbytes = await self._bounded(self.client.verify(
            self.session_id, position, proposals, probs, answer, resume))
        self.stats.verify_time_s += batch.compute_time_us / 1e6
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
            self._abandon()
            try:
                await self._open(history, self._bounded)
                self.position = len(history)
                self.stats.target_reopens += self.incarnation > 0
                log.info("target session re-opened", session_id=self.session_id,
                         tokens=len(history))
                return
            except UpstreamError as e:
                if e.code not in TARGET_RECOVERABLE:
                    raise
                if not isinstance(e, NoAnswer):
                    last = e
            left = give_up - time.monotonic()
            if left <= 0:
                raise Unavailable(
                    f"target service at {self.client.addr} did not come back within "
                    f"--target-retry-s {self.policy.target_retry_s:g}s: {last}") from None
            remaining = self.deadline.remaining()
            if remaining is not None and remaining < delay + 0.05:
                raise Unavailable(
                    f"target service at {self.client.addr} is unreachable and the request's "
                    f"deadline leaves no time to wait for it: {last}") from None
            await asyncio.sleep(min(delay, left))
            delay = min(1.0, delay * 2)
