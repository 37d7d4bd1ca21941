"""Clients for the draft and target services, and the compatibility check between them.

Upstream failures become SpecdecErrors carrying the upstream status code and naming the
service, so a Generate caller sees e.g. UNAVAILABLE "draft service at host:port: ...".
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import grpc
import structlog
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specdec.errors import FailedPrecondition, SpecdecError, Unavailable
from specdec.rpc.server import CHANNEL_OPTIONS
from specdec.rpc.status import code_name
from specdec.rpc.tls import ClientTls
from specdec.sampling import SamplingParams
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc

from .background import Background
from .batcher import Batcher
from .budgets import LatencyBudget, open_hold_s
from .costs import CostEvent, PrefillCall, ProposeCall, VerifyCall
from .streams import MessageStream

log = structlog.get_logger(__name__)

# A restarted service is found again within about a second (gRPC's default reconnect
# backoff grows to 2 minutes, far longer than a request waits).
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.min_reconnect_backoff_ms", 100),
                     ("grpc.max_reconnect_backoff_ms", 1000)]


class UpstreamError(SpecdecError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _service_config(service: str) -> str:
    """Retry UNAVAILABLE (a restarting or unreachable server). Safe: every state-changing
    call names its expected position and services answer a repeated call idempotently."""
    return json.dumps({"methodConfig": [{
        "name": [{"service": service}],
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }]})


def sampling_to_pb(params: SamplingParams) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(temperature=params.temperature, top_k=params.top_k,
                                     top_p=params.top_p, seed=params.seed)


class ServiceClient:
    """One service: a channel with retries, and a Batcher per batched method so that
    concurrent generations share calls (see batcher.py)."""

    STREAMED: frozenset[str] = frozenset()  # methods sent over a MessageStream (streams.py)

    def __init__(self, role: str, addr: str, stub_cls, service: str, timeout_s: float,
                 info_request, open_request, close_request, retries: bool = True,
                 tls: ClientTls | None = None, streams: bool = True):
        """info_request, open_request, close_request: the service's GetInfo, OpenSession and
        CloseSession request classes. retries: retry UNAVAILABLE calls in the channel.
        tls: TLS (specdec.rpc.tls.client_tls); None = plaintext. streams: send the round's
        calls (Propose, Verify) over one long-lived stream each (streams.py)."""
        self.role, self.addr, self.timeout_s = role, addr, timeout_s
        self.retries, self.use_streams = retries, streams
        retry = ([("grpc.service_config", _service_config(service)), ("grpc.enable_retries", 1)]
                 if retries else [("grpc.enable_retries", 0)])
        options = [*CHANNEL_OPTIONS, *RECONNECT_OPTIONS, *retry]
        self.channel = (grpc.aio.insecure_channel(addr, options=options) if tls is None else
                        grpc.aio.secure_channel(addr, tls.credentials,
                                                options=[*options, *tls.options()]))
        # on_error(service role, status code name): every failed call or item (metrics)
        self.on_error: Callable[[str, str], None] = lambda role, code: None
        # on_cost(event): what each batched call cost (costs.py; the K policy learns from it)
        self.on_cost: Callable[[CostEvent], None] = lambda event: None
        self.stub = stub_cls(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self._info_request = info_request
        self._close_request = close_request
        self._tasks = Background()
        self._streams: dict[str, MessageStream] = {}  # method -> its stream (_stream)
        self._unstreamed: set[str] = set()  # methods the service has no stream for
        self._batchers: list[Batcher] = []
        self.sessions = 0  # sessions of this coordinator open (or opening) on this service
        # its last call got no answer (timed out or unreachable); False again once one does
        self.unanswered = False
        self.opens = self._batcher("OpenSession", lambda items: open_request(items=items))
        self.closes = self._batcher("CloseSession", lambda ids: close_request(session_ids=ids))

    def _batcher(self, method: str, make_request) -> Batcher:
        batcher = Batcher(lambda items: self.call(method, make_request(items)))
        self._batchers.append(batcher)
        return batcher

    @property
    def batchers(self) -> list[Batcher]:
        return list(self._batchers)

    @property
    def lockstep_batchers(self) -> list[Batcher]:
        """The batchers a lockstep Scheduler dispatches (in its rounds): all of them."""
        return self.batchers

    def budget(self, method: str) -> LatencyBudget | None:
        """The adaptive timeout of `method`, if it has one (the draft's calls do)."""
        return None

    @staticmethod
    def size(method: str, request) -> float:
        """What a call's budget scales with: an open's prompt tokens, else 1."""
        return prompt_tokens(request.items) if method == "OpenSession" else 1.0

    async def call(self, method: str, request):
        budget = self.budget(method)
        size = 1.0 if budget is None else self.size(method, request)
        timeout = self.timeout_s if budget is None else budget.timeout(size)
        start = time.monotonic()
        try:
            reply = await self._invoke(method, request, timeout)
        except grpc.aio.AioRpcError as e:
            code = e.code().name
            self.unanswered = code in ("DEADLINE_EXCEEDED", "UNAVAILABLE")
            if budget is not None and code == "DEADLINE_EXCEEDED":
                budget.observe(timeout, size, timed_out=True)
                # what the call cost is at least its timeout: a draft that times out at
                # some load must not look free at that load (adaptive K would ask again)
                self._report_cost(method, request, None, timeout)
            self.on_error(self.role, code)
            detail = (f"no answer within {timeout:.3g}s" if code == "DEADLINE_EXCEEDED"
                      else e.details())
            raise UpstreamError(code, f"{self.role} service at {self.addr}: {detail}") from None
        self.unanswered = False
        if budget is not None:
            budget.observe(time.monotonic() - start, size)
        self._report_cost(method, request, reply)
        return reply

    def _report_cost(self, method: str, request, reply, timed_out_s: float = 0.0) -> None:
        """Report a batched call's cost to on_cost (each service its own kinds); reply None:
        the call timed out after timed_out_s."""

    def _stream(self, method: str) -> MessageStream | None:
        """The stream carrying `method`'s calls, for the methods that have one (the round's
        Propose and Verify), when streams are on."""
        if not self.use_streams or method not in self.STREAMED or method in self._unstreamed:
            return None
        if method not in self._streams:
            stream_method = getattr(self.stub, f"{method}Stream")
            self._streams[method] = MessageStream(lambda: stream_method())
        return self._streams[method]

    async def _invoke(self, method: str, request, timeout: float):
        stream = self._stream(method)
        if stream is None:
            return await getattr(self.stub, method)(request, timeout=timeout)
        try:
            return await stream.call(request, timeout)
        except grpc.aio.AioRpcError as e:
            if e.code() is grpc.StatusCode.UNIMPLEMENTED:  # a service from before streams
                log.info("the service has no stream for this method; using unary calls",
                         service=self.role, addr=self.addr, method=method)
                self._unstreamed.add(method)
            elif not self.retries or e.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            # Else the unary call says what the service says, with the channel's retries:
            # a stream whose connection broke ends with UNAVAILABLE, CANCELLED or even
            # INTERNAL ("Internal error from Core"), where a unary call reads UNAVAILABLE.
            # (Safe: calls name their positions.) The next call opens a new stream.
        return await getattr(self.stub, method)(request, timeout=timeout)

    async def submit(self, batcher: Batcher, item, counted: bool = True):
        """Send one item through a batcher (counted: see Batcher.submit). Returns (its
        result, the batch's reply, this item's bytes on the wire); a failed item raises the
        error a failed call would."""
        result, reply = await batcher.submit(item, counted)
        if result.code != 0:
            code = code_name(result.code)
            self.on_error(self.role, code)
            raise UpstreamError(code, f"{self.role} service at {self.addr}: {result.message}")
        size = item.ByteSize() if isinstance(item, Message) else len(item.encode())  # str ids
        return result, reply, size + result.ByteSize()

    async def info(self):
        """GetInfo; also sizes the batchers to the service's max_batch_items."""
        return self._sized(await self.call("GetInfo", self._info_request()))

    def _sized(self, info):
        """Size the batchers to a GetInfo reply's max_batch_items; returns the reply."""
        for batcher in self._batchers:
            batcher.max_items = max(1, info.max_batch_items)
        return info

    async def try_info(self, timeout_s: float):
        """GetInfo for health upkeep: None when it fails (not counted as an error); sizes the
        batchers like info()."""
        try:
            return self._sized(await self.stub.GetInfo(self._info_request(), timeout=timeout_s))
        except grpc.aio.AioRpcError:
            return None

    @property
    def busy(self) -> bool:
        """Background calls (closes) still running, or items queued."""
        return bool(self._tasks) or any(b.queue for b in self._batchers)

    async def open(self, session_id: str, prompt: list[int], sampling: SamplingParams,
                   max_tokens: int = 0, background: bool = False):
        """Open (and prefill) one session, batched with concurrent opens; background: from
        a task other than the generation's own (not counted, see Batcher.submit).
        Returns (OpenSessionResult, the batch's reply)."""
        self.sessions += 1  # (closing it, even after a failed open, counts it down)
        result, reply, _ = await self.submit(self.opens, common_pb2.OpenSessionItem(
            session_id=session_id, prompt_token_ids=prompt, sampling=sampling_to_pb(sampling),
            max_tokens=max_tokens), counted=not background)
        return result, reply

    async def close_session(self, session_id: str) -> None:
        self.sessions -= 1
        await self.submit(self.closes, session_id)

    def close_later(self, session_id: str, give_up_s: float = 120.0) -> None:
        """Close a session without waiting, retrying with backoff (closing is idempotent)
        while the service is unreachable, for up to give_up_s; past that the service's
        session TTL is the backstop."""
        self.sessions -= 1

        async def close():
            # A direct call, not through the batcher: in lockstep mode a call to a failing
            # service must not stall the calls of every other generation.
            give_up, delay = time.monotonic() + give_up_s, 0.1
            while True:
                try:
                    reply = await self.call("CloseSession",
                                            self._close_request(session_ids=[session_id]))
                    if all(r.code == 0 for r in reply.results):
                        return
                    last = reply.results[0].message
                except Exception as e:
                    last = e
                if time.monotonic() + delay > give_up:
                    break
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
            log.warning("could not close a session; the service's TTL will", service=self.role,
                        session_id=session_id, error=str(last))
        self.keep_task(asyncio.get_running_loop().create_task(close()))

    def keep_task(self, task: asyncio.Task) -> None:
        """Hold a reference to a background task until it ends (the loop holds weak ones)."""
        self._tasks.keep(task)

    @property
    def background_tasks(self) -> list[asyncio.Task]:
        """Background work still running (sessions being closed)."""
        return self._tasks.tasks

    async def wait_serving(self, timeout_s: float) -> None:
        """Wait until the service's health reports SERVING (models take a while to load)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                reply = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=5,
                                                wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as e:
                last = f"{e.code().name}: {e.details()}"
            await asyncio.sleep(0.5)
        raise Unavailable(f"{self.role} service at {self.addr} not SERVING after {timeout_s:g}s "
                          f"({last})")

    async def healthy(self, timeout_s: float) -> bool:
        """One health check: True when the service reports SERVING."""
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        for stream in self._streams.values():
            stream.reset()
        await self.channel.close()


def prompt_tokens(items) -> int:
    """The prompt tokens of an open's items (what its budget and its hold scale with)."""
    return sum(len(item.prompt_token_ids) for item in items)


class DraftClient(ServiceClient):
    """The draft's calls on a generation's path have adaptive timeouts and no retries: a
    draft that fails or is slower than its budget costs a round its proposals, never the
    request (see draft_leg.DraftLeg)."""

    STREAMED = frozenset({"Propose"})

    def __init__(self, addr: str, timeout_s: float, propose_timeout_s: float | None = None,
                 tls: ClientTls | None = None, streams: bool = True):
        """propose_timeout_s: fixed timeout of Propose; None = 4x its recent mean latency,
        at least 1 s (2 s before the first call)."""
        super().__init__("draft", addr, draft_pb2_grpc.DraftServiceStub,
                         "specdec.v1.DraftService", timeout_s, draft_pb2.GetDraftInfoRequest,
                         draft_pb2.OpenDraftSessionRequest, draft_pb2.CloseDraftSessionRequest,
                         retries=False,  # a failed draft call costs a round, not a retry
                         tls=tls, streams=streams)
        # GetProbs keeps the plain --rpc-timeout-s: it follows a sampled rejection, and
        # dropping a round after seeing that rejection would bias the output (target_leg.py).
        self._budgets = {
            "Propose": LatencyBudget(propose_timeout_s, floor_s=1.0, initial_s=2.0),
            # per prompt token: a batch of 8 prompts may take 8 times one
            "OpenSession": LatencyBudget(None, floor_s=max(2.0, 4 * (propose_timeout_s or 0)),
                                         initial_s=10.0)}
        self.proposals = self._batcher(
            "Propose", lambda items: draft_pb2.ProposeRequest(items=items))
        self.opens.hold_s = self._open_hold_s
        self.probs = self._batcher(
            "GetProbs", lambda items: draft_pb2.GetDraftProbsRequest(items=items))

    def budget(self, method: str) -> LatencyBudget | None:
        return self._budgets.get(method)

    def _open_hold_s(self, items) -> float:
        """How long an open (a prefill) holds the target's calls back in lockstep: about what
        it should take (open_hold_s); while the draft's last call went unanswered, one Propose
        budget at most. A draft that fails must not cost the other generations' rounds more
        than the budget the user gave its calls."""
        propose = self._budgets["Propose"]
        if self.unanswered:
            return propose.timeout()
        return open_hold_s(propose, self._budgets["OpenSession"], prompt_tokens(items))

    @property
    def lockstep_batchers(self) -> list[Batcher]:
        """The draft's closes stay out of the lockstep rounds, and its opens hold the others
        back for about what they should take (open_hold_s): a draft that hangs must not hold
        up the target's calls for longer."""
        return [self.proposals, self.probs, self.opens]

    def _report_cost(self, method: str, request, reply, timed_out_s: float = 0.0) -> None:
        if method == "Propose":  # size: the most proposals an item asked for
            sessions = len(request.items) if reply is None else reply.batched_sessions
            seconds = timed_out_s if reply is None else reply.compute_time_us / 1e6
            # catch-up: appended tokens beyond the one a round leaves (a prefill first)
            catch_up = max(len(i.append_token_ids) for i in request.items) - 1
            self.on_cost(ProposeCall(sessions, max(i.num_tokens for i in request.items), seconds,
                                     reply is None, max(0, catch_up)))
        elif method == "OpenSession" and reply is not None:
            self.on_cost(PrefillCall(prompt_tokens(request.items), reply.compute_time_us / 1e6))

    async def propose(self, session_id: str, position: int, truncate_to: int | None,
                      append: list[int], k: int):
        """Propose for one session, batched with concurrent sessions' proposals.

        Returns (ProposeResult, ProposeResponse of the batch, this item's bytes on the wire)."""
        return await self.submit(self.proposals, draft_pb2.ProposeItem(
            session_id=session_id, position=position, truncate_to=truncate_to,
            append_token_ids=append, num_tokens=k))

    async def get_probs(self, session_id: str, position: int, index: int,
                        query: target_pb2.DraftProbsQuery) -> tuple[bytes, int]:
        """The draft's q at `index` of its last proposal, at the ids a target's
        DraftProbsQuery names; returns (float32 bytes, wire bytes)."""
        result, _, nbytes = await self.submit(self.probs, draft_pb2.DraftProbsItem(
            session_id=session_id, position=position, index=index,
            token_ids=query.token_ids, all_tokens=query.all_tokens))
        return result.probs, nbytes


class TargetClient(ServiceClient):
    STREAMED = frozenset({"Verify"})

    def __init__(self, addr: str, timeout_s: float,
                 tls: ClientTls | None = None, streams: bool = True):
        super().__init__("target", addr, target_pb2_grpc.TargetServiceStub,
                         "specdec.v1.TargetService", timeout_s, target_pb2.GetTargetInfoRequest,
                         target_pb2.OpenTargetSessionRequest,
                         target_pb2.CloseTargetSessionRequest, tls=tls, streams=streams)
        self.verifies = self._batcher(
            "Verify", lambda items: target_pb2.VerifyRequest(items=items))

    def _report_cost(self, method: str, request, reply, timed_out_s: float = 0.0) -> None:
        if method == "Verify" and reply is not None:  # size: rows (answers need no pass)
            rows = [len(i.draft_token_ids) + 1 for i in request.items if not i.draft_probs_answer]
            self.on_cost(VerifyCall(len(rows), sum(rows), reply.compute_time_us / 1e6))

    async def truncate(self, session_id: str, position: int, length: int) -> int:
        """Roll a session back to `length` tokens (unbatched; rare). Returns its position."""
        reply = await self.call("Truncate", target_pb2.TruncateTargetSessionRequest(
            session_id=session_id, position=position, length=length))
        return reply.position

    async def verify(self, session_id: str, position: int, drafts: list[int],
                     draft_probs: list[float] = (), answer: bytes | None = None,
                     resume_rejected: bool = False):
        """Verify one session's proposals (or answer its pending draft_probs_query, or resume
        a rejection), batched with concurrent sessions' items.

        Returns (VerifyResult, VerifyResponse of the batch, this item's bytes on the wire)."""
        return await self.submit(self.verifies, target_pb2.VerifyItem(
            session_id=session_id, position=position, draft_token_ids=drafts,
            draft_probs=draft_probs, draft_probs_answer=answer,
            resume_rejected=resume_rejected))


def check_compatible(draft, target) -> None:
    """Refuse a draft/target pair whose token ids do not mean the same thing: their tokenizers
    (vocabulary and special tokens, as fingerprinted by specdec.models.tokenizer_fingerprint)
    must be the same. Output-head sizes may differ (heads padded differently).

    draft, target: common_pb2.ModelInfo."""
    if draft.tokenizer_fingerprint != target.tokenizer_fingerprint:
        raise FailedPrecondition(
            f"tokenizers differ (vocabulary or special tokens): draft {draft.model_name} "
            f"({draft.tokenizer_fingerprint[:12]}) vs target {target.model_name} "
            f"({target.tokenizer_fingerprint[:12]}); pick a draft that shares the target's "
            f"tokenizer")
