"""The OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions, /v1/models, /health.

A FastAPI app over the same GenerationCore as the gRPC Generator (not a proxy to it): it
converts OpenAI's JSON to GenerateArgs and the core's Tokens / Stats back to OpenAI's shapes
(server-sent events when streaming), and maps SpecdecError codes to HTTP statuses with
OpenAI's error body. Fields that would change the result but are not supported get a 400
naming the field instead of being ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from specdec.errors import InvalidArgument, NotFound, SpecdecError

from ..generation.core import GenerateArgs, GenerationCore
from ..generation.decode import Finish, Stats, Token
from .auth import UNAUTHENTICATED_MESSAGE, ApiKeys, bearer
from .openai_schema import (
    ChatRequest,
    CompletionRequest,
    OpenAIRequest,
    message_text,
    unsupported,
)

HTTP_STATUS = {"INVALID_ARGUMENT": 400, "OUT_OF_RANGE": 400, "FAILED_PRECONDITION": 400,
               "NOT_FOUND": 404, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503,
               "DEADLINE_EXCEEDED": 504, "CANCELLED": 499}
ERROR_TYPE = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
              429: "rate_limit_error", 499: "cancelled", 503: "service_unavailable_error",
              504: "timeout_error"}
FINISH_REASON = {Finish.LENGTH: "length", Finish.STOP: "stop", Finish.EOS: "stop"}
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPE.get(status, "internal_error"),
                      "param": param, "code": status}}


def error_response(e: SpecdecError) -> JSONResponse:
    status = HTTP_STATUS.get(e.code, 500)
    headers = {"Retry-After": "1"} if status == 429 else None  # (full: try again shortly)
    return JSONResponse(error_body(status, str(e)), status_code=status, headers=headers)


def spec_stats(s: Stats) -> dict:
    """Per-request speculation statistics (an extension field, like vLLM's)."""
    return {"acceptance_rate": round(s.acceptance_rate, 4),
            "mean_accepted_length": round(s.mean_accepted_length, 4),
            "rounds": s.rounds, "num_draft_tokens": s.proposed,
            "num_accepted_tokens": s.accepted, "accepted_per_position": s.accepted_at,
            "draft_time_s": round(s.draft_time_s, 4), "verify_time_s": round(s.verify_time_s, 4),
            "time_to_first_token_s": round(s.time_to_first_token_s, 4),
            "draft_fallback_rounds": s.draft_fallback_rounds, "seed": s.seed}


def usage(s: Stats) -> dict:
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens}


class OpenAIFrontEnd:
    """Builds GenerateArgs from OpenAI requests and runs them on the core."""

    def __init__(self, core: GenerationCore, model_name: str, draft_name: str,
                 timeout_s: float):
        self.core, self.model_name, self.draft_name = core, model_name, draft_name
        self.timeout_s = timeout_s
        self.created = int(time.time())

    def check_model(self, model: str) -> None:
        if model not in (self.model_name, self.model_name.rstrip("/").rsplit("/", 1)[-1]):
            raise NotFound(f"model {model!r} is not served here; GET /v1/models lists "
                           f"{self.model_name!r}")

    def check(self, req: OpenAIRequest) -> None:
        """What needs no tokenizing: checked first, so a bad request costs no work."""
        self.check_model(req.model)
        unsupported(req)

    def args(self, req: OpenAIRequest, prompt_ids: list[int], default_max: int) -> GenerateArgs:
        max_tokens = req.max_completion_tokens or req.max_tokens
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        return GenerateArgs(
            prompt_ids, default_max if max_tokens is None else max_tokens,
            req.num_speculative_tokens, 1.0 if req.temperature is None else req.temperature,
            req.top_k or 0, req.top_p, req.seed, stop, req.adaptive_k)

    async def completion_args(self, req: CompletionRequest) -> GenerateArgs:
        self.check(req)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise InvalidArgument(f"'prompt' must be one string (batches of prompts are "
                                      f"not supported), got a list of {len(prompt)}")
            prompt = prompt[0]
        if not prompt:
            raise InvalidArgument("'prompt' is empty")
        return self.args(req, await self.core.tokenize(prompt), COMPLETION_DEFAULT_MAX_TOKENS)

    async def chat_args(self, req: ChatRequest) -> GenerateArgs:
        self.check(req)
        tokenizer = self.core.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidArgument("the target's tokenizer has no chat template; use "
                                  "/v1/completions")
        if not req.messages:
            raise InvalidArgument("'messages' is empty")
        messages = [{"role": m.role, "content": message_text(m)} for m in req.messages]
        ids = await self.core.prompts.chat(messages)
        limits = self.core.limits
        default_max = max(1, min(limits.max_new_tokens, limits.target_context - len(ids)))
        return self.args(req, ids, default_max)


async def run_to_end(core: GenerationCore, args: GenerateArgs, deadline_s: float,
                     request: Request) -> tuple[str, Stats]:
    """Generate the whole answer; a client that disconnects cancels it."""
    async def collect():
        text = []
        async for event in core.stream(args, deadline_s, api="http"):
            if isinstance(event, list):
                text.extend(t.text for t in event)
            else:
                return "".join(text), event
    task = asyncio.ensure_future(collect())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.1)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise asyncio.CancelledError("the client disconnected")
    finally:
        if not task.done():
            task.cancel()


def sse(obj) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


async def stream_events(core: GenerationCore, args: GenerateArgs, deadline_s: float,
                        ) -> tuple[AsyncIterator[list[Token] | Stats], list[Token] | Stats]:
    """Start generating and wait for the first event, so that errors before the first token
    (bad input, limits, target down) still get their HTTP status."""
    events = core.stream(args, deadline_s, api="http", stream=True)
    try:
        first = await anext(events)
    except BaseException:
        await events.aclose()
        raise
    return events, first


def create_app(front: OpenAIFrontEnd, registry: CollectorRegistry | None = None,
               keys: ApiKeys = ApiKeys(), metrics_need_key: bool = False) -> FastAPI:
    """The app; `registry`: also serve these Prometheus metrics at GET /metrics; `keys`:
    the API keys /v1/* (and /metrics when metrics_need_key) ask for."""
    core = front.core
    app = FastAPI(title="specdec", description="OpenAI-compatible API of the specdec "
                  "coordinator (speculative decoding: output exactly the target model's)")

    @app.middleware("http")
    async def api_key(request: Request, call_next):
        path = request.url.path
        guarded = path.startswith("/v1/") or (metrics_need_key and path == "/metrics")
        if guarded and not keys.allows(bearer(request.headers.get("authorization"))):
            return JSONResponse(error_body(401, UNAUTHENTICATED_MESSAGE), status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        message = f"{where or 'request'}: {first.get('msg', 'invalid request')}"
        return JSONResponse(error_body(400, message, where), status_code=400)

    @app.exception_handler(SpecdecError)
    async def specdec_error(request: Request, exc: SpecdecError):
        return error_response(exc)

    @app.get("/health")
    async def health():
        if core.draining or not core.target_serving:
            reason = "shutting down" if core.draining else "the target service is not serving"
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return {"status": "ok"}

    if registry is not None:
        @app.get("/metrics")
        async def metrics():
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": front.model_name, "object": "model", "created": front.created,
            "owned_by": "specdec", "max_model_len": core.limits.target_context,
            "specdec": {"draft_model": front.draft_name,
                        "max_speculative_tokens": core.limits.max_k,
                        "default_speculative_tokens": core.limits.default_k}}]}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        args = await front.completion_args(req)
        return await respond(front, req, args, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        args = await front.chat_args(req)
        return await respond(front, req, args, request, chat=True)

    return app



async def respond(front: OpenAIFrontEnd, req: OpenAIRequest, args: GenerateArgs,
                  request: Request, chat: bool):
    """A completion (chat=False) or chat completion: whole, or streamed as server-sent
    events (req.stream)."""
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    head = {"id": rid, "created": created, "model": front.model_name}
    if not req.stream:
        text, stats = await run_to_end(front.core, args, front.timeout_s, request)
        finish = FINISH_REASON[stats.finish]
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "finish_reason": finish, "logprobs": None} if chat else
                  {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
        return {**head, "object": "chat.completion" if chat else "text_completion",
                "choices": [choice], "usage": usage(stats),
                "speculative_decoding": spec_stats(stats)}
    events, first = await stream_events(front.core, args, front.timeout_s)
    chunks = Chunks(head, chat, bool(req.stream_options and req.stream_options.include_usage))
    return StreamingResponse(chunks.body(events, first), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


@dataclass(frozen=True)
class Chunks:
    """The server-sent events of one streamed response."""
    head: dict  # id, created, model
    chat: bool
    include_usage: bool

    @property
    def obj(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def chunk(self, delta_text: str | None, finish: str | None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else (
                {} if delta_text is None else {"content": delta_text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta_text or "", "finish_reason": finish,
                      "logprobs": None}
        out = {**self.head, "object": self.obj, "choices": [choice]}
        if self.include_usage:
            out["usage"] = None
        return out

    async def body(self, events: AsyncIterator[list[Token] | Stats], first: list[Token] | Stats):
        async with contextlib.aclosing(events):
            if self.chat:
                yield sse(self.chunk(None, None, role=True))
            event = first
            while True:
                if isinstance(event, list):  # one chunk per round, as its tokens arrive
                    if delta := "".join(t.text for t in event):
                        yield sse(self.chunk(delta, None))
                else:
                    spec = spec_stats(event)
                    yield sse({**self.chunk(None, FINISH_REASON[event.finish]),
                               "speculative_decoding": spec})
                    if self.include_usage:
                        yield sse({**self.head, "object": self.obj, "choices": [],
                                   "usage": usage(event), "speculative_decoding": spec})
                    break
                try:
                    event = await anext(events)
                except SpecdecError as e:  # after the headers: an error event
                    status = HTTP_STATUS.get(e.code, 500)
                    yield sse(error_body(status, str(e)))
                    break
        yield sse("[DONE]")
