"""The speculative decoding loop: propose K -> verify -> roll the draft back -> stream.

Transport-agnostic (works with any replica sets whose clients offer open/propose/verify/
get_probs/truncate/close) and free of tensor math: the accept/reject rule runs inside the
target service; after a sampled rejection the target leg returns a Rejection and the loop
ferries the few draft probabilities it asks for from the draft to the target
(Generation._verify). Faults of either service are handled by its leg (legs.py) from the
token history this loop keeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import structlog

from specdec.sampling import GREEDY, SamplingParams

from ..speculation.adaptive import AdaptiveK
from ..upstream.background import Background
from .draft_leg import DraftLeg
from .faults import Deadline, FaultPolicy
from .legs import Request
from .stats import Finish, Stats
from .target_leg import Rejection, TargetLeg, Verified
from .textstream import TextStream

log = structlog.get_logger(__name__)

__all__ = ["Finish", "Generation", "Params", "Services", "Stats", "Token"]


@dataclass(frozen=True)
class Params:
    max_new_tokens: int
    k: int
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = GREEDY
    adaptive: bool = False  # k is the most a round proposes (adaptive.SessionK picks)
    ahead: bool = False  # draft the next round during each verify (greedy only; --draft-ahead)


@dataclass
class Token:
    id: int
    text: str


@dataclass(frozen=True)
class Services:
    """What every generation of a coordinator shares (GenerationCore builds it once)."""
    draft: object  # each tier's upstream.replicas.ReplicaSet
    target: object
    tokenizer: object
    eos_token_ids: set[int]
    scheduler: object = None  # the lockstep upstream.batcher.Scheduler; None: pipelined
    policy: FaultPolicy = FaultPolicy()
    adaptive: AdaptiveK | None = None  # the cost model for params.adaptive (None: K fixed)
    background: Background = field(default_factory=Background)
    # on_round(fixed seconds): each round's wall time minus its calls' forward time
    on_round: Callable[[float], None] = lambda fixed_s: None

    @property
    def sessions(self) -> int:
        """Generations running now (under lockstep; else this one)."""
        return self.scheduler.active if self.scheduler is not None else 1


class Generation:
    """One request: its token history, its two legs, and the rounds that extend it."""

    def __init__(self, services: Services, session_id: str, prompt_ids: list[int],
                 params: Params, deadline: Deadline, stats: Stats):
        """deadline: the request's; stats: where to count (the caller keeps it to report a
        generation that failed)."""
        self.services, self.session_id, self.params, self.stats = (
            services, session_id, params, stats)
        self.history = list(prompt_ids)  # every final token: what a lost session is rebuilt from
        self.text = TextStream(services.tokenizer, prompt_ids, list(params.stop))
        request = Request(session_id, params.sampling,
                          len(prompt_ids) + params.max_new_tokens + params.k, deadline, stats,
                          services.policy, services.background)
        self.target = TargetLeg(services.target, request)
        self.draft = DraftLeg(services.draft, request) if params.k > 0 else None
        adaptive = services.adaptive
        self.chooser = adaptive.session() if adaptive is not None and params.adaptive else None
        self.ready: list[int] = []  # the next round's proposals, when a block drafted ahead holds

    async def run(self) -> AsyncIterator[list[Token] | Stats]:
        """Yield each round's final Tokens (a non-empty list), then the Stats. Sessions are
        closed in every case.

        A round's tokens are counted (and the end found) before they are yielded, so the next
        round's calls go out first and writing the tokens to the client overlaps its passes
        instead of delaying them."""
        if self.services.scheduler is not None:
            self.services.scheduler.begin()
        finished, upcoming = False, None
        try:
            await self.open()
            upcoming = asyncio.ensure_future(self.run_round())
            while True:
                tokens = []
                for token_id in await upcoming:
                    tokens.append(self._emit(token_id))
                    if self.stats.finish is not None:
                        break
                upcoming = None
                if self.stats.finish is None:
                    upcoming = asyncio.ensure_future(self.run_round())
                yield tokens
                if self.stats.finish is not None:
                    self.stats.total_time_s = time.perf_counter() - self.stats.started
                    yield self.stats
                    finished = True
                    return
        finally:
            if upcoming is not None:
                upcoming.cancel()
            cleanup = asyncio.ensure_future(self._close(upcoming))
            if finished:  # the call ends once its sessions are closed
                await asyncio.shield(cleanup)
            else:  # failed or cancelled: report at once, close in the background
                self.services.background.keep(cleanup)

    async def open(self) -> None:
        """Open the sessions on the prompt. One after the other: on a shared CPU, two
        prefills at once slow each other down more than they gain (the services take turns
        everywhere else too)."""
        await self.target.open(self.history)
        if self.draft is None:
            return
        if self.chooser is not None and self.chooser.defers_draft(
                self.params.k, self.services.sessions, prompt=len(self.history),
                remaining=self.params.max_new_tokens):
            self.draft.defer()  # opened once a round asks for proposals (K may stay 0)
        else:
            await self.draft.open(self.history)  # a failure here only means target-only rounds

    async def run_round(self) -> list[int]:
        """Propose K, verify, roll the draft back; returns the round's final tokens (the
        accepted proposals, then the target's own token)."""
        started, forward = time.perf_counter(), self.stats.forward_time_s
        await self._move_if_draining()
        k, behind = self._choose_k()
        proposals, probs = await self._proposals(k)
        proposed_at = time.perf_counter()
        ahead = self._draft_ahead(k, len(proposals))
        try:
            verified = await self._verify(proposals, probs)
        except BaseException:
            if ahead is not None:
                ahead.cancel()
            raise
        block = None if ahead is None else (await ahead)[0]
        self.stats.record_round(verified.proposed, verified.accepted)
        log.debug("round", session_id=self.session_id, k=k, proposed=verified.proposed,
                  accepted=verified.accepted, behind=behind,
                  propose_ms=round((proposed_at - started) * 1e3, 1),
                  verify_ms=round((time.perf_counter() - proposed_at) * 1e3, 1))
        if self.chooser is not None:
            self.chooser.record(verified.proposed, verified.accepted)
        new_tokens = [*proposals[:verified.accepted], verified.next_token]
        if self.draft is not None:
            self.ready = self.draft.commit(verified.proposed, verified.accepted, new_tokens,
                                           block)
        self.history.extend(new_tokens)
        if self.draft is not None and k > 0:  # a deferred draft opens now
            self.draft.open_later(self.history)  # (after the Verify: the first token comes first)
        # (a block drafted ahead overlaps the verify: its forward time may exceed the gap)
        self.services.on_round(max(0.0, time.perf_counter() - started
                                   - (self.stats.forward_time_s - forward)))
        return new_tokens

    async def _verify(self, proposals: list[int], probs: list[float]) -> Verified:
        """Verify the round's proposals; a sampled rejection is resolved here: the draft's q
        at the rejected proposal goes to the target, which then draws its token."""
        outcome = await self.target.verify(self.history, proposals, probs)
        while isinstance(outcome, Rejection):
            answer = await self.draft.answer(self.history, outcome)
            if answer is None:
                log.warning("round dropped after a sampled rejection: the draft is gone",
                            reason=self.draft.reason)
                return await self.target.drop(self.history, outcome)
            outcome = await self.target.answer(self.history, outcome, answer)
        return outcome

    async def _move_if_draining(self) -> None:
        """Sessions on a draining replica move at a round boundary (nothing is in flight)."""
        if self.target.should_move:
            await self.target.move(self.history)
        if self.draft is not None and self.draft.should_move:
            self.draft.move()
            self.ready = []

    def _choose_k(self) -> tuple[int, int]:
        """This round's K, and the tokens the draft must catch up on first (behind). A round
        yields up to K + 1 tokens: it never proposes past max_new_tokens."""
        remaining = self.params.max_new_tokens - self.stats.generated_tokens
        k = min(self.params.k, remaining - 1)
        draft = self.draft
        behind = draft.behind(len(self.history)) if draft is not None and not self.ready else 0
        if self.chooser is not None:
            k = self.chooser.choose(k, draft_ready=draft is not None and draft.ready,
                                    sessions=self.services.sessions, behind=behind,
                                    remaining=remaining)
        return k, behind

    async def _proposals(self, k: int) -> tuple[list[int], list[float]]:
        if self.ready:  # proposed during the last verify
            return self.draft.take(self.ready, k), []
        if self.draft is not None and k > 0:
            return await self.draft.propose(self.history, k)
        return [], []

    def _draft_ahead(self, k: int, proposed: int) -> asyncio.Future | None:
        """With --draft-ahead, the next round's block, proposed during this round's verify:
        a guess of this round's last token, then k more (None: no block this round)."""
        if not (self.params.ahead and self.draft is not None and k > 0 and
                self.stats.generated_tokens + proposed + 1 < self.params.max_new_tokens):
            return None
        return asyncio.ensure_future(self.draft.propose(self.history, k + 1, ahead=True))

    def _emit(self, token_id: int) -> Token:
        """Count one final token, stream its text, and see whether it ends the generation."""
        stats = self.stats
        stats.generated_tokens += 1
        delta, stopped = self.text.push(token_id)
        if stopped:
            stats.finish = Finish.STOP
        elif token_id in self.services.eos_token_ids:
            stats.finish = Finish.EOS
        elif stats.generated_tokens >= self.params.max_new_tokens:
            stats.finish = Finish.LENGTH
        if stats.finish is not None and not stopped:
            delta += self.text.flush()
        if stats.generated_tokens == 1:
            stats.time_to_first_token_s = time.perf_counter() - stats.started
        return Token(token_id, delta)

    async def _close(self, pending: asyncio.Future | None = None) -> None:
        """Close both sessions once the round still in flight (cancelled) has let go."""
        try:
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)
            await asyncio.gather(*(leg.close() for leg in (self.target, self.draft) if leg))
        except Exception as e:  # (leg.close retries in the background itself)
            log.warning("closing sessions failed", error=str(e))
        finally:
            if self.services.scheduler is not None:
                self.services.scheduler.end()
