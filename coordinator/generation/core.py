"""What every front end of the coordinator shares (the gRPC Generator and the OpenAI-
compatible HTTP API): request validation, the decode loop with its metrics, the canonical
log line, draining. Transport-free: front ends convert their messages to a GenerateArgs and
the yielded rounds of Tokens / Stats back, and map SpecdecError codes to their own statuses."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from specdec.errors import InvalidArgument, ResourceExhausted, SpecdecError, Unavailable
from specdec.sampling import GREEDY, SamplingParams

from ..speculation.adaptive import AdaptiveK
from .decode import Generation, Params, Services, Stats, Token
from .faults import Deadline, FaultPolicy
from .metrics import CoordinatorMetrics
from .prompts import PromptTokenizer

log = structlog.get_logger(__name__)

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class Limits:
    max_new_tokens: int
    max_k: int
    default_k: int
    max_context: int  # the smaller of the draft's and target's contexts
    target_context: int
    adaptive_k: bool = False  # the coordinator's --adaptive-k (and it has an AdaptiveK)
    draft_ahead: bool = False  # the coordinator's --draft-ahead
    max_concurrent: int = 0  # the coordinator's --max-concurrent-requests (0 = no cap)


@dataclass(frozen=True)
class GenerateArgs:
    """One generation request as the front ends hand it over (None = not given)."""
    prompt_ids: list[int]
    max_new_tokens: int
    k: int | None = None
    temperature: float = 0.0
    top_k: int = 0
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    adaptive_k: bool | None = None


def validate(args: GenerateArgs, limits: Limits) -> Params:
    """Check a request against the limits; InvalidArgument says what to change."""
    if not args.prompt_ids:
        raise InvalidArgument("prompt is empty")
    if not 1 <= args.max_new_tokens <= limits.max_new_tokens:
        raise InvalidArgument(f"max_new_tokens must be in [1, {limits.max_new_tokens}], got "
                              f"{args.max_new_tokens}")
    k = limits.default_k if args.k is None else args.k
    if not 0 <= k <= limits.max_k:
        raise InvalidArgument(f"num_speculative_tokens (K) must be in [0, {limits.max_k}], got "
                              f"{k}")
    if len(args.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"at most {MAX_STOP_STRINGS} stop strings, got {len(args.stop)}")
    if any(len(s) > MAX_STOP_CHARS for s in args.stop):
        raise InvalidArgument(f"a stop string may have at most {MAX_STOP_CHARS} characters, got "
                              f"{max(len(s) for s in args.stop)}")
    context = limits.max_context if k else limits.target_context
    if len(args.prompt_ids) + args.max_new_tokens > context:
        raise InvalidArgument(
            f"the prompt has {len(args.prompt_ids)} tokens; with max_new_tokens "
            f"{args.max_new_tokens} that exceeds the models' context of {context} tokens")
    # an unset seed draws a random one (reported in the stats)
    seed = secrets.randbits(63) if args.seed is None else args.seed
    sampling = SamplingParams(args.temperature, args.top_k,
                              1.0 if args.top_p is None else args.top_p, seed).validate()
    adaptive = args.adaptive_k
    if adaptive is None:  # a seeded sample reproduces its tokens only with a fixed K
        adaptive = limits.adaptive_k and (sampling.greedy or args.seed is None)
    # Drafting ahead is greedy-only: a sampled rejection reads the draft's rows of the block
    # under verification, which the block proposed ahead would have replaced.
    return Params(args.max_new_tokens, k, tuple(args.stop),
                  GREEDY if sampling.greedy else sampling, adaptive and k > 0,
                  ahead=limits.draft_ahead and sampling.greedy and k > 0)


class GenerationCore:
    def __init__(self, draft, target, tokenizer, eos_token_ids: set[int], limits: Limits,
                 scheduler=None, policy: FaultPolicy = FaultPolicy(),
                 metrics: CoordinatorMetrics | None = None, adaptive: AdaptiveK | None = None):
        """adaptive: the coordinator's adaptive-K cost model (None = K is always fixed)."""
        self.draft, self.target = draft, target
        self.adaptive = adaptive
        self.tokenizer = tokenizer
        self.prompts = PromptTokenizer(tokenizer, limits.target_context)
        # what every generation shares, handed to each once
        self.services = Services(draft, target, tokenizer, eos_token_ids, scheduler, policy,
                                 adaptive, on_round=metrics.round_fixed.observe if metrics
                                 else lambda fixed_s: None)
        self.limits = limits
        self.metrics = metrics
        self.draining = False  # set on SIGTERM: new requests get UNAVAILABLE
        self.target_serving = True  # the target's health, as last checked
        self.running = 0  # generations in progress
        self.idle = asyncio.Event()
        self.idle.set()

    async def tokenize(self, text: str, special_tokens: bool = True) -> list[int]:
        """`text`'s token ids (prompts.PromptTokenizer: length checked first, off the loop)."""
        return await self.prompts.encode(text, special_tokens)

    def admit(self) -> None:
        """ResourceExhausted when --max-concurrent-requests generations already run."""
        cap = self.limits.max_concurrent
        if cap and self.running >= cap:
            self.metrics.finished("RESOURCE_EXHAUSTED", None)
            raise ResourceExhausted(f"the coordinator already runs its "
                                    f"--max-concurrent-requests {cap} requests; retry shortly")

    async def stream(self, args: GenerateArgs, deadline_s: float | None = None,
                     **log_fields) -> AsyncIterator[list[Token] | Stats]:
        """Validate, generate, count: yields each round's Tokens (a non-empty list), then the
        Stats. Raises
        SpecdecError (InvalidArgument, ResourceExhausted, Unavailable, …). deadline_s: the
        time the caller still waits; log_fields: extra fields of the canonical log line."""
        if self.draining:
            self.metrics.finished("UNAVAILABLE", None)
            raise Unavailable("the coordinator is shutting down; retry on another replica")
        self.admit()
        session_id = uuid.uuid4().hex
        deadline = Deadline(deadline_s)
        self.running += 1
        self.idle.clear()
        self.metrics.running.inc()
        status, stats = "UNKNOWN", None
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            fields = {"k": "default" if args.k is None else args.k,
                      "max_new_tokens": args.max_new_tokens,
                      "temperature": round(args.temperature, 4), **log_fields}
            try:
                params = validate(args, self.limits)
                stats = Stats(session_id, len(args.prompt_ids),
                              seed=0 if params.sampling.greedy else params.sampling.seed)
                last_token_at = None
                events = Generation(self.services, session_id, args.prompt_ids, params,
                                    deadline, stats).run()
                async with contextlib.aclosing(events):
                    async for event in events:
                        if isinstance(event, list):
                            now = asyncio.get_running_loop().time()
                            if last_token_at is None:
                                self.metrics.ttft.observe(stats.time_to_first_token_s)
                            else:
                                self.metrics.itl.observe(now - last_token_at)
                            for _ in event[1:]:  # (a round's tokens arrive together)
                                self.metrics.itl.observe(0.0)
                            last_token_at = now
                        else:
                            status = "OK"
                            log.info("generate", **fields, **event.summary())
                        yield event
            except (asyncio.CancelledError, GeneratorExit):
                left = deadline.remaining()
                status = "DEADLINE_EXCEEDED" if left is not None and left <= 0 else "CANCELLED"
                log.info("generate cancelled by the client", **fields, status=status,
                         **(stats.summary() if stats else {}))
                raise
            except SpecdecError as e:
                status = e.code
                log.info("generate failed", **fields, code=e.code, error=str(e),
                         **(stats.summary() if stats else {}))
                raise
            except Exception:
                status = "INTERNAL"
                log.exception("generate crashed", **fields)
                raise
            finally:
                self.metrics.finished(status, stats)
                self.metrics.running.dec()
                self.running -= 1
                if not self.running:
                    self.idle.set()
