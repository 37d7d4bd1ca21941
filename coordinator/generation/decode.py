"""The speculative decoding loop: propose K -> verify -> roll the draft back -> stream.

Transport-agnostic (works with any replica sets whose clients offer open/propose/verify/
get_probs/truncate/close) and free of tensor math: the accept/reject rule runs inside the
target service; after a sampled rejection the loop ferries the few draft probabilities the
target asks for from the draft to the target. Faults of either service are handled by its
leg (legs.py) from the token history this loop keeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from specdec.sampling import GREEDY, SamplingParams

from ..speculation.adaptive import AdaptiveK
from .draft_leg import DraftLeg
from .faults import Deadline, FaultPolicy
from .stats import Finish, Stats
from .target_leg import TargetLeg
from .textstream import TextStream

log = structlog.get_logger(__name__)

__all__ = ["Finish", "Params", "Stats", "Token", "generate"]


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


async def generate(session_id: str, prompt_ids: list[int], params: Params, draft, target,
                   tokenizer, eos_token_ids: set[int], scheduler=None,
                   policy: FaultPolicy = FaultPolicy(),
                   deadline: Deadline | None = None, stats: Stats | None = None,
                   adaptive: AdaptiveK | None = None) -> AsyncIterator[Token | Stats]:
    """Yield each accepted Token, then the Stats. Sessions are closed in every case.

    draft, target: each tier's replicas.ReplicaSet. scheduler: the batcher.Scheduler the
    clients' batchers use in lockstep mode, told when this generation starts and ends; None
    in pipelined mode. deadline: the request's.
    stats: where to count (the caller keeps it to report a generation that failed).
    adaptive: the coordinator's cost model, used when params.adaptive (None: K is fixed)."""
    if scheduler is not None:
        scheduler.begin()
    deadline = deadline or Deadline(None)
    if stats is None:
        stats = Stats(session_id, len(prompt_ids),
                      seed=0 if params.sampling.greedy else params.sampling.seed)
    text = TextStream(tokenizer, prompt_ids, list(params.stop))
    max_tokens = len(prompt_ids) + params.max_new_tokens + params.k
    history = list(prompt_ids)  # every final token: what a lost session is rebuilt from
    tgt = TargetLeg(target, session_id, params.sampling, max_tokens, deadline, stats, policy)
    dft = (DraftLeg(draft, session_id, params.sampling, max_tokens, deadline, stats, policy)
           if params.k > 0 else None)
    chooser = adaptive.session() if adaptive is not None and params.adaptive else None
    finished = False
    ready: list[int] = []  # the next round's proposals, when a block drafted ahead holds
    try:
        # One after the other: on a shared CPU, two prefills at once slow each other down
        # more than they gain (the services take turns everywhere else too).
        await tgt.open(history)
        if dft is not None:
            if chooser is not None and chooser.defers_draft(
                    params.k, scheduler.active if scheduler is not None else 1,
                    prompt=len(history), remaining=params.max_new_tokens):
                dft.defer()  # opened once a round asks for proposals (K may stay 0)
            else:
                await dft.open(history)  # a failure here only means target-only rounds

        while True:
            # Sessions on a draining replica move at a round boundary (nothing is in flight).
            if tgt.should_move:
                await tgt.move(history)
            if dft is not None and dft.should_move:
                dft.move()
                ready = []
            # A round yields up to k + 1 tokens; never propose past max_new_tokens.
            remaining = params.max_new_tokens - stats.generated_tokens
            k = min(params.k, remaining - 1)
            behind = dft.behind(len(history)) if dft is not None and not ready else 0
            if chooser is not None:
                k = chooser.choose(k, draft_ready=dft is not None and dft.ready,
                                   sessions=scheduler.active if scheduler is not None else 1,
                                   behind=behind, remaining=remaining)
            started = time.perf_counter()
            if ready:  # proposed during the last verify
                proposals, probs = dft.take(ready, k), []
            else:
                proposals, probs = await dft.propose(history, k) if dft and k > 0 else ([], [])
            proposed_at = time.perf_counter()
            ahead = None
            if (params.ahead and dft is not None and k > 0
                    and stats.generated_tokens + len(proposals) + 1 < params.max_new_tokens):
                # the next round's block: a guess of this round's last token, then k more
                ahead = asyncio.ensure_future(dft.propose(history, k + 1, ahead=True))
            try:
                round_ = await tgt.verify(history, proposals, probs, dft)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                raise
            block = None if ahead is None else (await ahead)[0]
            stats.record_round(round_.proposed, round_.accepted)
            log.debug("round", session_id=session_id, k=k, proposed=round_.proposed,
                      accepted=round_.accepted, behind=behind,
                      propose_ms=round((proposed_at - started) * 1e3, 1),
                      verify_ms=round((time.perf_counter() - proposed_at) * 1e3, 1))
            if chooser is not None:
                chooser.record(round_.proposed, round_.accepted)
            new_tokens = [*proposals[:round_.accepted], round_.next_token]
            if dft is not None:
                ready = dft.commit(round_.proposed, round_.accepted, new_tokens, block)
            history.extend(new_tokens)
            if dft is not None and dft.deferred and k > 0:
                dft.open_later(history)  # (after the Verify: the first token comes first)

            for token_id in new_tokens:
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
                    finished = True
                    return
    finally:
        cleanup = asyncio.ensure_future(_close_all([leg for leg in (tgt, dft) if leg],
                                                   scheduler))
        if finished:  # the call ends once its sessions are closed
            await asyncio.shield(cleanup)
        else:  # failed or cancelled: report at once, close in the background
            target.keep_task(cleanup)


async def _close_all(legs, scheduler) -> None:
    try:
        await asyncio.gather(*(leg.close() for leg in legs))
    except Exception as e:  # (leg.close retries in the background itself)
        log.warning("closing sessions failed", error=str(e))
    finally:
        if scheduler is not None:
            scheduler.end()
