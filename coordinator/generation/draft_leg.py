"""The draft side of one generation (see legs.py): missing drafts cost rounds, not requests."""

from __future__ import annotations

import asyncio

import structlog

from ..upstream.clients import UpstreamError
from .draft_state import DraftPosition, DraftState, Opening, TimedOut
from .faults import Backoff
from .legs import Leg, Request, fallback_reason
from .target_leg import Rejection

log = structlog.get_logger(__name__)


class DraftLeg(Leg):
    """The draft session of one generation, or its absence (see the module docstring).
    `state` says which (draft_state.DraftState); `at` where the session stands."""

    def __init__(self, pool, request: Request):
        super().__init__(pool, request)
        self.backoff = Backoff(self.policy.draft_retry_initial_s, self.policy.draft_retry_max_s)
        self.state = DraftState.CLOSED
        self.reason = ""  # why the draft is missing, while it is
        self.at = DraftPosition()
        # UNSURE: the Propose that timed out; the session is kept and re-synchronised by
        # sending it again (_resync) instead of being re-opened with a prefill of the history
        self._timed_out: TimedOut | None = None
        self._opening: Opening | None = None  # OPENING: the open under way

    @property
    def ready(self) -> bool:
        """The session is open and in step: the next Propose can propose."""
        return self.state is DraftState.READY

    @property
    def deferred(self) -> bool:
        """The first session has not opened yet because the generation deferred it: its
        rounds run target-only, and they are not fallbacks."""
        return self.state is DraftState.DEFERRED or (
            self.state is DraftState.OPENING and self._opening.first)

    def _add_time(self, us: int) -> None:
        self.stats.draft_time_s += us / 1e6

    async def open(self, history: list[int]) -> bool:
        """Open the first draft session on the prompt; False if the draft failed."""
        try:
            await self._open(history)
        except UpstreamError as e:
            self._lost(e)
            return False
        self.at = DraftPosition(len(history))
        self.state = DraftState.READY
        return True

    def defer(self) -> None:
        """Open the first session only once a round has asked for proposals (open_later):
        adaptive K may stay 0 for the whole generation (under lockstep at load, or where the
        cost model finds that speculation does not pay), and a prefill of the prompt on the
        draft would then cost the first token and the services' time for nothing. Rounds run
        target-only until the session is open; they are not fallbacks."""
        self.state = DraftState.DEFERRED

    def open_later(self, history: list[int]) -> None:
        """A round of a deferred leg asked for proposals: open the session now, in the
        background (called after the round's Verify, so that under lockstep the prefill
        runs after the first token, not before)."""
        if self.state is DraftState.DEFERRED:
            self._start_reopen(history)

    def behind(self, history_len: int) -> int:
        """Tokens the draft must prefill before it can propose, beyond the one every round
        leaves: those of rounds that did not propose, or (deferred, not yet opening) the whole
        history. 0 while a session re-opens or is lost: that cost is under way already."""
        if self.state in (DraftState.READY, DraftState.UNSURE):
            return self.at.behind
        return history_len if self.state is DraftState.DEFERRED else 0

    def _start_reopen(self, history: list[int]) -> None:
        """Re-open in the background: rounds go on target-only meanwhile, and the session
        catches up on the tokens final since (`append`) at its first Propose."""
        first = self.state is DraftState.DEFERRED
        if not first:  # every attempt gets its own id: a failed one may linger
            self.incarnation += 1
        try:
            client, sid, call = self._next_open(list(history), background=True)
        except UpstreamError as e:  # no draft replica at all
            self._lost(e)
            return

        length = len(history)  # (history grows while the open runs)

        async def reopen():
            _, reply = await call
            return sid, length, reply
        task = asyncio.get_running_loop().create_task(reopen())
        self.background.keep(task)
        self._opening = Opening(task, sid, client, first)
        self.state = DraftState.OPENING

    def _adopt_reopened(self, history: list[int]) -> None:
        opening, self._opening = self._opening, None
        self.client = opening.client
        try:
            sid, length, reply = opening.task.result()
        except Exception as e:
            self._lost(e, attempted=opening.session_id)
            return
        self.session_id, self.state = sid, DraftState.READY
        self.at = DraftPosition(length, None, history[length:])
        self._add_time(reply.compute_time_us)
        self.backoff.reset()
        if not opening.first:
            self.stats.draft_reopens += 1
            log.info("draft session re-opened; speculation resumes", session_id=sid,
                     replica=self.client.addr, tokens=length, after=self.reason)
        self.reason = ""

    def move(self) -> None:
        """Leave the session's replica (called when should_move); rounds run target-only
        until a session re-opens elsewhere."""
        log.info("draft replica drains; moving the session", replica=self.client.addr)
        self.reason = "replica_draining"
        self._timed_out = None
        self._abandon()
        self.state = DraftState.LOST
        self.backoff.reset()

    async def propose(self, history: list[int], k: int, ahead: bool = False
                      ) -> tuple[list[int], list[float]]:
        """K proposals and q of each; ([], []) when the draft is missing (a fallback round).
        ahead: the block is proposed during the round's verify, for the next round (see
        commit); its failure costs the next round, which counts the fallback."""
        if self.state is DraftState.LOST and self.backoff.ready():
            self._start_reopen(history)
        if self.state is DraftState.OPENING and self._opening.task.done():
            self._adopt_reopened(history)
        if self.state not in (DraftState.READY, DraftState.UNSURE):
            if not ahead and not self.deferred:
                self.stats.record_fallback(self.reason)
            return [], []
        if self.state is DraftState.UNSURE and not (self.backoff.ready() and
                                                    await self._resync(history)):
            if not ahead:
                self.stats.record_fallback(self.reason)
            return [], []
        sent = TimedOut(self.at.copy(), k, len(history))
        try:
            proposal, batch, nbytes = await self.deadline.bound(self.client.propose(
                self.session_id, self.at.held, self.at.keep, self.at.append, k))
        except UpstreamError as e:
            if e.code == "DEADLINE_EXCEEDED" and not ahead:  # slow, not gone: keep it
                self._timed_out, self.reason = sent, "timeout"
                self.state = DraftState.UNSURE
                log.info("draft slower than its budget; continuing target-only",
                         error=str(e), retry_in_s=round(self.backoff.delay_s, 3))
                self.backoff.failed()
            else:
                self._lost(e)
            if not ahead:
                self.stats.record_fallback(self.reason)
            return [], []
        self.stats.draft_time_s += batch.compute_time_us / 1e6
        self.stats.forward_time_s += batch.forward_time_us / 1e6
        self.stats.wire_bytes += nbytes
        self.at.proposed(proposal.position)  # (it has seen every final token; may propose none)
        return list(proposal.token_ids), list(proposal.draft_probs)

    async def _resync(self, history: list[int]) -> bool:
        """Send the Propose that timed out again, unchanged: if the service ran it, it
        answers from its memory of the last call (no compute); if not, it runs it now.
        Either way the session's state is known again; its proposals are dropped and the
        tokens final since are appended on the next Propose. False (the session given up,
        as after any other failure) if this times out or fails too."""
        sent, self._timed_out = self._timed_out, None
        try:
            proposal, _, nbytes = await self.deadline.bound(self.client.propose(
                self.session_id, sent.at.held, sent.at.keep, sent.at.append, sent.k))
        except UpstreamError as e:
            self._lost(e)
            return False
        self.stats.wire_bytes += nbytes
        self.at = DraftPosition(proposal.position,
                                proposal.position - len(proposal.token_ids),
                                history[sent.length:])
        self.state = DraftState.READY
        self.backoff.reset()
        self.reason = ""
        log.info("draft session re-synchronised after a timeout", session_id=self.session_id,
                 tokens=sent.length)
        return True

    async def answer(self, history: list[int], rejection: Rejection) -> bytes | None:
        """The draft's q at a rejected proposal, at the ids the target asks for: from the
        session that proposed, or (that one lost) from a fresh session on the same prefix;
        None if the draft cannot be reached."""
        answer = await self.probs(rejection.query, rejection.accepted)
        if answer is None:
            prefix = history + rejection.proposals[:rejection.accepted]
            answer = await self.recompute_probs(prefix, rejection.query)
        return answer

    async def probs(self, query, index: int) -> bytes | None:
        """q at `index` of the last proposal, at the ids a target's DraftProbsQuery names;
        None if the draft failed."""
        if self.session_id is None:
            return None
        try:
            answer, nbytes = await self.deadline.bound(
                self.client.get_probs(self.session_id, self.at.held, index, query))
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
            try:
                client, sid, call = self._next_open(prefix)
            except UpstreamError as e:  # no draft replica at all
                log.info("re-computing the draft's probabilities failed", error=str(e))
                return None
            try:
                await self.deadline.bound(call)
                proposal, _, _ = await self.deadline.bound(
                    client.propose(sid, len(prefix), None, [], 1))
                answer, nbytes = await self.deadline.bound(
                    client.get_probs(sid, proposal.position, 0, query))
                self.stats.wire_bytes += nbytes
                return answer
            except UpstreamError as e:
                log.info("re-computing the draft's probabilities failed", error=str(e),
                         attempt=attempt + 1)
                if e.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    self.pool.report_failure(client)
                await asyncio.sleep(0.1 * (attempt + 1))
            finally:
                client.close_later(sid)
        return None

    def commit(self, proposed: int, accepted: int, new_tokens: list[int],
               ahead: list[int] | None = None) -> list[int]:
        """A round ended: `proposed` proposals, `accepted` of them kept, `new_tokens` final.
        ahead: the block a Propose made during the round's verify (None: none was sent),
        i.e. a guess of the round's last token, then proposals after it. Returns the next
        round's proposals when the guess was right (every proposal accepted, and the guess is
        the target's token), else [] with the block rolled back."""
        if self.state is not DraftState.READY:
            return []  # (a session being re-synchronised learns the history then)
        if ahead is not None:
            if ahead and accepted == proposed and ahead[0] == new_tokens[-1]:
                return ahead[1:]
            self.stats.ahead_discarded += bool(ahead)
            end = self.at.held - len(ahead)  # where the round's proposals end
        else:
            end = self.at.proposals_end
        if proposed or ahead is not None:
            self.at.settle(end, proposed, accepted, new_tokens[-1])
        else:
            self.at.append.extend(new_tokens)
        return []

    def take(self, ready: list[int], k: int) -> list[int]:
        """The round's proposals from a block drafted ahead (commit's return): its first k;
        the rest are rolled back on the next Propose."""
        if len(ready) > k:
            self.at.keep = self.at.held - (len(ready) - k)
        self.stats.ahead_used += k > 0
        return ready[:k]

    async def close(self) -> None:
        if self._opening is not None:
            # An open under way: close its session once it ends, whatever the answer (an
            # open whose reply was lost may still have happened; closing is idempotent).
            client, sid = self._opening.client, self._opening.session_id
            self._opening.task.add_done_callback(lambda _: client.close_later(sid))
            self._opening = None
        if self.session_id is not None:  # in the background: a slow draft delays nothing
            self.client.close_later(self.session_id)
            self.session_id = None
        self.state = DraftState.CLOSED

    def _lost(self, err: Exception, attempted: str | None = None) -> None:
        """The draft failed: drop its session (and `attempted`, an open that failed but may
        have happened on the service) and wait a backoff before trying again."""
        self.reason = fallback_reason(err)
        self._timed_out = None
        log.warning("draft lost; continuing target-only", reason=self.reason, error=str(err),
                    retry_in_s=round(self.backoff.delay_s, 3))
        if self.client is not None and getattr(err, "code", "") in ("UNAVAILABLE",
                                                                    "DEADLINE_EXCEEDED"):
            self.pool.report_failure(self.client)
        if attempted is not None:
            self.client.close_later(attempted)
        self._abandon()
        self.state = DraftState.LOST
        self.backoff.failed()
