"""Clients for the draft and target services, and the compatibility check between them.

Upstream failures become SpecdecErrors carrying the upstream status code and naming the
service, so a Generate caller sees e.g. UNAVAILABLE "draft service at host:port: ...".
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from specdec.errors import FailedPrecondition, SpecdecError, Unavailable
from specdec.rpc.server import CHANNEL_OPTIONS
from specdec.rpc.status import code_name
from specdec.sampling import SamplingParams
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc

from .batcher import Batcher


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

    def __init__(self, role: str, addr: str, stub_cls, service: str, timeout_s: float,
                 info_request, open_request, close_request):
        """info_request, open_request, close_request: the service's GetInfo, OpenSession and
        CloseSession request classes."""
        self.role, self.addr, self.timeout_s = role, addr, timeout_s
        self.channel = grpc.aio.insecure_channel(
            addr, options=[*CHANNEL_OPTIONS, ("grpc.service_config", _service_config(service)),
                           ("grpc.enable_retries", 1)])
        self.stub = stub_cls(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self._info_request = info_request
        self._batchers: list[Batcher] = []
        self.opens = self._batcher("OpenSession", lambda items: open_request(items=items))
        self.closes = self._batcher("CloseSession", lambda ids: close_request(session_ids=ids))

    def _batcher(self, method: str, make_request) -> Batcher:
        batcher = Batcher(lambda items: self.call(method, make_request(items)))
        self._batchers.append(batcher)
        return batcher

    @property
    def batchers(self) -> list[Batcher]:
        return list(self._batchers)

    async def call(self, method: str, request):
        try:
            return await getattr(self.stub, method)(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as e:
            raise UpstreamError(e.code().name,
                                f"{self.role} service at {self.addr}: {e.details()}") from None

    async def submit(self, batcher: Batcher, item):
        """Send one item through a batcher. Returns (its result, the batch's reply, this
        item's bytes on the wire); a failed item raises the error a failed call would."""
        result, reply = await batcher.submit(item)
        if result.code != 0:
            raise UpstreamError(code_name(result.code),
                                f"{self.role} service at {self.addr}: {result.message}")
        size = item.ByteSize() if isinstance(item, Message) else len(item.encode())  # str ids
        return result, reply, size + result.ByteSize()

    async def info(self):
        """GetInfo; also sizes the batchers to the service's max_batch_items."""
        info = await self.call("GetInfo", self._info_request())
        for batcher in self._batchers:
            batcher.max_items = max(1, info.max_batch_items)
        return info

    async def open(self, session_id: str, prompt: list[int], sampling: SamplingParams,
                   max_tokens: int = 0):
        """Open (and prefill) one session, batched with concurrent opens.
        Returns (OpenSessionResult, the batch's reply)."""
        result, reply, _ = await self.submit(self.opens, common_pb2.OpenSessionItem(
            session_id=session_id, prompt_token_ids=prompt, sampling=sampling_to_pb(sampling),
            max_tokens=max_tokens))
        return result, reply

    async def close_session(self, session_id: str) -> None:
        await self.submit(self.closes, session_id)

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

    async def close(self) -> None:
        await self.channel.close()


class DraftClient(ServiceClient):
    def __init__(self, addr: str, timeout_s: float):
        super().__init__("draft", addr, draft_pb2_grpc.DraftServiceStub,
                         "specdec.v1.DraftService", timeout_s, draft_pb2.GetDraftInfoRequest,
                         draft_pb2.OpenDraftSessionRequest, draft_pb2.CloseDraftSessionRequest)
        self.proposals = self._batcher(
            "Propose", lambda items: draft_pb2.ProposeRequest(items=items))
        self.probs = self._batcher(
            "GetProbs", lambda items: draft_pb2.GetDraftProbsRequest(items=items))

    async def propose(self, session_id: str, position: int, truncate_to: int | None,
                      append: list[int], k: int):
        """Propose for one session, batched with concurrent sessions' proposals.

        Returns (ProposeResult, ProposeResponse of the batch, this item's bytes on the wire)."""
        return await self.submit(self.proposals, draft_pb2.ProposeItem(
            session_id=session_id, position=position, truncate_to=truncate_to,
            append_token_ids=append, num_tokens=k))

    async def get_probs(self, session_id: str, position: int,
                        query: target_pb2.DraftProbsQuery) -> tuple[bytes, int]:
        """The draft's q for a target's DraftProbsQuery; returns (float32 bytes, wire bytes)."""
        result, _, nbytes = await self.submit(self.probs, draft_pb2.DraftProbsItem(
            session_id=session_id, position=position, index=query.index,
            token_ids=query.token_ids, all_tokens=query.all_tokens))
        return result.probs, nbytes


class TargetClient(ServiceClient):
    def __init__(self, addr: str, timeout_s: float):
        super().__init__("target", addr, target_pb2_grpc.TargetServiceStub,
                         "specdec.v1.TargetService", timeout_s, target_pb2.GetTargetInfoRequest,
                         target_pb2.OpenTargetSessionRequest,
                         target_pb2.CloseTargetSessionRequest)
        self.verifies = self._batcher(
            "Verify", lambda items: target_pb2.VerifyRequest(items=items))

    async def verify(self, session_id: str, position: int, drafts: list[int],
                     draft_probs: list[float] = (), answer: bytes | None = None):
        """Verify one session's proposals (or answer its pending draft_probs_query), batched
        with concurrent sessions' items.

        Returns (VerifyResult, VerifyResponse of the batch, this item's bytes on the wire)."""
        return await self.submit(self.verifies, target_pb2.VerifyItem(
            session_id=session_id, position=position, draft_token_ids=drafts,
            draft_probs=draft_probs, draft_probs_answer=answer))


def check_compatible(draft, target) -> None:
    """Refuse a draft/target pair whose token ids do not mean the same thing.

    draft, target: common_pb2.ModelInfo."""
    if draft.vocab_size != target.vocab_size:
        raise FailedPrecondition(
            f"vocabularies differ: draft {draft.model_name} has {draft.vocab_size} token ids, "
            f"target {target.model_name} has {target.vocab_size}; pick a draft that shares the "
            f"target's tokenizer")
    if draft.tokenizer_fingerprint != target.tokenizer_fingerprint:
        raise FailedPrecondition(
            f"tokenizers differ: draft {draft.model_name} ({draft.tokenizer_fingerprint[:12]}) vs "
            f"target {target.model_name} ({target.tokenizer_fingerprint[:12]}); pick a draft "
            f"that shares the target's tokenizer")
