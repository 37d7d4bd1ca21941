"""The speculative decoding loop: propose K -> verify -> roll the draft back -> stream.

Transport-agnostic (works with any draft/target client offering open/propose/verify/
get_probs/close) and free of tensor math: the accept/reject rule runs inside the target
service; after a sampled rejection the loop ferries the few draft probabilities the target
asks for (draft_probs_query) from the draft to the target.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from specdec.sampling import GREEDY, SamplingParams

from .textstream import TextStream

log = structlog.get_logger(__name__)


class Finish(enum.Enum):
    LENGTH = "length"
    STOP = "stop"
    EOS = "eos"


@dataclass(frozen=True)
class Params:
    max_new_tokens: int
    k: int
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = GREEDY


@dataclass
class Token:
    id: int
    text: str


@dataclass
class Stats:
    session_id: str
    prompt_tokens: int
    finish: Finish | None = None
    generated_tokens: int = 0
    rounds: int = 0
    time_to_first_token_s: float = 0.0
    total_time_s: float = 0.0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    wire_bytes: int = 0
    proposed_at: list[int] = field(default_factory=list)  # [i]: rounds proposing position i
    accepted_at: list[int] = field(default_factory=list)  # [i]: rounds accepting it (same len)
    verify_batch_sessions: int = 0  # summed over rounds: sessions in each verify pass
    seed: int = 0
    started: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def mean_accepted_length(self) -> float:
        return 1 + self.accepted / self.rounds if self.rounds else 0.0

    @property
    def proposed(self) -> int:
        return sum(self.proposed_at)

    @property
    def accepted(self) -> int:
        return sum(self.accepted_at)

    def record_round(self, proposed: int, accepted: int) -> None:
        """One round: draft positions 0..proposed-1 proposed, 0..accepted-1 accepted."""
        self.rounds += 1
        grow = proposed - len(self.proposed_at)
        if grow > 0:
            self.proposed_at.extend([0] * grow)
            self.accepted_at.extend([0] * grow)
        for i in range(proposed):
            self.proposed_at[i] += 1
            self.accepted_at[i] += i < accepted

    @property
    def mean_verify_batch(self) -> float:
        return self.verify_batch_sessions / self.rounds if self.rounds else 0.0

    @property
    def coordinator_time_s(self) -> float:
        return max(0.0, self.total_time_s - self.draft_time_s - self.verify_time_s)

    def summary(self) -> dict:
        return {
            "finish_reason": self.finish.value if self.finish else None,
            "prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
            "rounds": self.rounds, "proposed_draft_tokens": self.proposed,
            "accepted_draft_tokens": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted_length": round(self.mean_accepted_length, 4),
            "ttft_s": round(self.time_to_first_token_s, 4),
            "total_s": round(self.total_time_s, 4), "draft_s": round(self.draft_time_s, 4),
            "verify_s": round(self.verify_time_s, 4),
            "coordinator_s": round(self.coordinator_time_s, 4),
            "wire_bytes": self.wire_bytes, "seed": self.seed,
            "mean_verify_batch": round(self.mean_verify_batch, 3),
        }


async def generate(session_id: str, prompt_ids: list[int], params: Params, draft, target,
                   tokenizer, eos_token_ids: set[int],
                   scheduler=None) -> AsyncIterator[Token | Stats]:
    """Yield each accepted Token, then the Stats. Sessions are closed in every case.

    scheduler: the batcher.Scheduler the clients' batchers use in lockstep mode, told when
    this generation starts and ends; None in pipelined mode."""
    if scheduler is not None:
        scheduler.begin()
    stats = Stats(session_id, len(prompt_ids),
                  seed=0 if params.sampling.greedy else params.sampling.seed)
    text = TextStream(tokenizer, prompt_ids, list(params.stop))
    use_draft = params.k > 0
    services = [target, draft] if use_draft else [target]
    opened = []
    try:
        # One after the other: on a shared CPU, two prefills at once slow each other down
        # more than they gain (the services take turns everywhere else too).
        for service in services:
            _, reply = await service.open(session_id, prompt_ids, params.sampling,
                                          len(prompt_ids) + params.max_new_tokens + params.k)
            opened.append(service)
            if service is target:
                stats.verify_time_s += reply.compute_time_us / 1e6
            else:
                stats.draft_time_s += reply.compute_time_us / 1e6

        position = len(prompt_ids)  # tokens the target session holds (all final)
        draft_position = position  # tokens the draft session holds (final + proposals)
        draft_keep: int | None = None  # where the draft must roll back to next round
        draft_append: list[int] = []  # final tokens the draft has not seen yet
        while True:
            # A round yields up to k + 1 tokens; never propose past max_new_tokens.
            k = min(params.k, params.max_new_tokens - stats.generated_tokens - 1)
            proposals: list[int] = []
            draft_probs: list[float] = []
            if k > 0:
                proposal, batch, nbytes = await draft.propose(
                    session_id, draft_position, draft_keep, draft_append, k)
                stats.draft_time_s += batch.compute_time_us / 1e6
                stats.wire_bytes += nbytes
                proposals, draft_probs = list(proposal.token_ids), list(proposal.draft_probs)
                draft_position = proposal.position
            result, batch, nbytes = await target.verify(session_id, position, proposals,
                                                        draft_probs)
            accepted = result.num_accepted
            stats.verify_time_s += batch.compute_time_us / 1e6
            stats.verify_batch_sessions += batch.batched_sessions
            stats.wire_bytes += nbytes
            while result.HasField("draft_probs_query"):  # sampled rejection: fetch q for it
                probs, nbytes = await draft.get_probs(session_id, draft_position,
                                                      result.draft_probs_query)
                stats.wire_bytes += nbytes
                result, batch, nbytes = await target.verify(
                    session_id, result.position, [], answer=probs)
                stats.verify_time_s += batch.compute_time_us / 1e6
                stats.wire_bytes += nbytes
            stats.record_round(len(proposals), accepted)
            position = result.position
            if k > 0:
                draft_keep = draft_position - k + accepted
                draft_append = [result.next_token_id]
            else:
                draft_append.append(result.next_token_id)

            for token_id in [*proposals[:accepted], result.next_token_id]:
                stats.generated_tokens += 1
                delta, stopped = text.push(token_id)
                if stopped:
                    stats.finish = Finish.STOP
                elif token_id in eos_token_ids:
                    stats.finish = Finish.EOS
                elif stats.generated_tokens >= params.max_new_tokens:
                    stats.finish = Finish.LENGTH
                if stats.finish is not None and not stopped:
                    delta += text.flush()
                if stats.generated_tokens == 1:
                    stats.time_to_first_token_s = time.perf_counter() - stats.started
                yield Token(token_id, delta)
                if stats.finish is not None:
                    stats.total_time_s = time.perf_counter() - stats.started
                    yield stats
                    return
    finally:
        await asyncio.shield(_close_all(opened, session_id, scheduler))


async def _close_all(services, session_id: str, scheduler) -> None:
    try:
        await _close_each(services, session_id)
    finally:
        if scheduler is not None:
            scheduler.end()


async def _close_each(services, session_id: str) -> None:
    results = await asyncio.gather(*(s.close_session(session_id) for s in services),
                                   return_exceptions=True)
    for service, r in zip(services, results, strict=True):
        if isinstance(r, BaseException):
            log.warning("closing a session failed", service=service.role, error=str(r))
