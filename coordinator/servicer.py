"""The Generator servicer: validates requests, runs the decode loop, streams pb messages."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from dataclasses import dataclass

import grpc
import structlog
from prometheus_client import CollectorRegistry

from specdec.errors import InvalidArgument, SpecdecError
from specdec.rpc.status import status_code
from specdec.sampling import GREEDY, SamplingParams
from specdec.v1 import generator_pb2, generator_pb2_grpc

from .decode import Finish, Params, Stats, Token, generate
from .faults import Deadline, FaultPolicy
from .metrics import CoordinatorMetrics

log = structlog.get_logger(__name__)

MAX_STOP_STRINGS = 16

_FINISH_PB = {
    Finish.LENGTH: generator_pb2.FINISH_REASON_LENGTH,
    Finish.STOP: generator_pb2.FINISH_REASON_STOP,
    Finish.EOS: generator_pb2.FINISH_REASON_EOS,
}


@dataclass(frozen=True)
class Limits:
    max_new_tokens: int
    max_k: int
    default_k: int
    max_context: int  # the smaller of the draft's and target's contexts
    target_context: int


def params_from_pb(req: generator_pb2.GenerateRequest, limits: Limits) -> Params:
    if not req.prompt:
        raise InvalidArgument("prompt is empty")
    if not 1 <= req.max_new_tokens <= limits.max_new_tokens:
        raise InvalidArgument(f"max_new_tokens must be in [1, {limits.max_new_tokens}], got "
                              f"{req.max_new_tokens}")
    k = (req.num_speculative_tokens if req.HasField("num_speculative_tokens")
         else limits.default_k)
    if k > limits.max_k:
        raise InvalidArgument(f"num_speculative_tokens (K) must be in [0, {limits.max_k}], got "
                              f"{k}")
    if len(req.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"at most {MAX_STOP_STRINGS} stop strings, got {len(req.stop)}")
    return Params(req.max_new_tokens, k, tuple(req.stop),
                  sampling_from_request(req))


def sampling_from_request(req: generator_pb2.GenerateRequest) -> SamplingParams:
    """Validated sampling parameters; an unset seed draws a random one (reported in stats)."""
    seed = req.seed if req.HasField("seed") else secrets.randbits(63)
    params = SamplingParams(req.temperature, req.top_k,
                            req.top_p if req.HasField("top_p") else 1.0, seed).validate()
    return GREEDY if params.greedy else params


def stats_to_pb(s: Stats) -> generator_pb2.GenerationStats:
    return generator_pb2.GenerationStats(
        finish_reason=_FINISH_PB[s.finish], prompt_tokens=s.prompt_tokens,
        generated_tokens=s.generated_tokens, rounds=s.rounds, proposed_draft_tokens=s.proposed,
        accepted_draft_tokens=s.accepted, acceptance_rate=s.acceptance_rate,
        mean_accepted_length=s.mean_accepted_length,
        time_to_first_token_s=s.time_to_first_token_s, total_time_s=s.total_time_s,
        draft_time_s=s.draft_time_s, verify_time_s=s.verify_time_s,
        coordinator_time_s=s.coordinator_time_s, session_id=s.session_id, seed=s.seed,
        wire_bytes=s.wire_bytes, mean_verify_batch=s.mean_verify_batch,
        proposed_at_position=s.proposed_at, accepted_at_position=s.accepted_at,
        draft_fallback_rounds=s.draft_fallback_rounds,
        draft_fallback_reason=s.draft_fallback_reason, draft_reopens=s.draft_reopens,
        target_reopens=s.target_reopens)


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, draft, target, tokenizer, eos_token_ids: set[int], limits: Limits,
                 scheduler=None, policy: FaultPolicy = FaultPolicy(),
                 metrics: CoordinatorMetrics | None = None):
        self.draft, self.target = draft, target
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.limits = limits
        self.policy = policy
        self.metrics = metrics or CoordinatorMetrics(CollectorRegistry())
        self.draining = False  # set on SIGTERM: new requests get UNAVAILABLE
        self.running = 0  # Generate calls in progress
        self.idle = asyncio.Event()
        self.idle.set()

    def _prepare(self, req) -> tuple[Params, list[int]]:
        params = params_from_pb(req, self.limits)
        prompt_ids = self.tokenizer(req.prompt).input_ids
        context = self.limits.max_context if params.k else self.limits.target_context
        if len(prompt_ids) + params.max_new_tokens > context:
            raise InvalidArgument(
                f"the prompt has {len(prompt_ids)} tokens; with max_new_tokens "
                f"{params.max_new_tokens} that exceeds the models' context of {context} tokens")
        return params, prompt_ids

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        if self.draining:
            self.metrics.finished("UNAVAILABLE", None)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the coordinator is shutting down; retry on another replica")
        session_id = uuid.uuid4().hex
        self.running += 1
        self.idle.clear()
        self.metrics.running.inc()
        status, stats = "UNKNOWN", None
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            fields = {"k": request.num_speculative_tokens
                      if request.HasField("num_speculative_tokens") else "default",
                      "max_new_tokens": request.max_new_tokens,
                      "temperature": round(request.temperature, 4)}
            try:
                params, prompt_ids = self._prepare(request)
                stats = Stats(session_id, len(prompt_ids),
                              seed=0 if params.sampling.greedy else params.sampling.seed)
                events = generate(session_id, prompt_ids, params, self.draft, self.target,
                                  self.tokenizer, self.eos_token_ids, self.scheduler,
                                  self.policy, Deadline(context.time_remaining()), stats)
                last_token_at = None
                async with contextlib.aclosing(events):
                    async for event in events:
                        if isinstance(event, Token):
                            now = time.perf_counter()
                            if last_token_at is None:
                                self.metrics.ttft.observe(now - stats.started)
                            else:
                                self.metrics.itl.observe(now - last_token_at)
                            last_token_at = now
                            yield generator_pb2.GenerateResponse(
                                token=generator_pb2.GeneratedToken(id=event.id, text=event.text))
                        else:
                            log.info("generate", **fields, **event.summary())
                            status = "OK"
                            yield generator_pb2.GenerateResponse(stats=stats_to_pb(event))
            except asyncio.CancelledError:
                left = context.time_remaining()
                status = "DEADLINE_EXCEEDED" if left is not None and left <= 0 else "CANCELLED"
                log.info("generate cancelled by the client", **fields, status=status,
                         **(stats.summary() if stats else {}))
                raise
            except SpecdecError as e:
                status = e.code
                log.info("generate failed", **fields, code=e.code, error=str(e),
                         **(stats.summary() if stats else {}))
                await context.abort(status_code(e), str(e))
            except Exception as e:
                status = "INTERNAL"
                log.exception("generate crashed", **fields)
                await context.abort(grpc.StatusCode.INTERNAL,
                                    f"generation failed: {type(e).__name__}: {e}")
            finally:
                self.metrics.finished(status, stats)
                self.metrics.running.dec()
                self.running -= 1
                if not self.running:
                    self.idle.set()
