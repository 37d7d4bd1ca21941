"""Real gRPC servers (draft, target, coordinator) on loopback ports, run in-process on an
event loop in a background thread, so tests can call them with ordinary blocking clients."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import draft_service.servicer as draft_server
import target_service.servicer as target_server
from coordinator import server as coordinator_server
from coordinator.config import CoordinatorConfig
from coordinator.speculation.adaptive import CostCurve, VerifyCost
from specdec.config import ModelServiceConfig
from specdec.v1 import draft_pb2_grpc, generator_pb2_grpc, target_pb2_grpc


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def service_config(**overrides) -> ModelServiceConfig:
    base = dict(model="", host="127.0.0.1", port=0, dtype="float32", device="cpu", threads=0,
                max_sessions=64, session_ttl_s=600.0, max_proposal_tokens=16, max_batch_items=64,
                max_cache_mb=0.0, cache_dir="", warmup=True, log_level="info", log_format="console")
    base.update(overrides)
    return ModelServiceConfig(**base)


def coordinator_config(draft_port: int, target_port: int, **overrides) -> CoordinatorConfig:
    base = dict(draft=f"127.0.0.1:{draft_port}", target=f"127.0.0.1:{target_port}",
                host="127.0.0.1", port=0, tokenizer="", cache_dir="", max_new_tokens_limit=512,
                max_speculative_tokens=8, default_k=4, schedule="lockstep", rpc_timeout_s=30.0,
                connect_timeout_s=30.0,
                log_level="info", log_format="console",
                # K fixed unless a request asks for adaptive K: the tiny models' own costs (a
                # draft step as dear as a verify pass) rightly keep adaptive K at 0
                adaptive_k=False)
    base.update(overrides)
    return CoordinatorConfig(**base)


@dataclass
class Stack:
    loop: LoopThread
    draft: tuple  # (RunningServer, servicer)
    target: tuple
    coordinator: object
    channels: list = field(default_factory=list)

    def _channel(self, port: int) -> grpc.Channel:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.channels.append(ch)
        return ch

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.coordinator.port}"

    def generator(self):
        return generator_pb2_grpc.GeneratorStub(self._channel(self.coordinator.port))

    def draft_stub(self):
        return draft_pb2_grpc.DraftServiceStub(self._channel(self.draft[0].port))

    def target_stub(self):
        return target_pb2_grpc.TargetServiceStub(self._channel(self.target[0].port))

    def health(self, which: str) -> int:
        port = {"draft": self.draft[0].port, "target": self.target[0].port,
                "coordinator": self.coordinator.port}[which]
        stub = health_pb2_grpc.HealthStub(self._channel(port))
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status

    def live_sessions(self) -> tuple[int, int]:
        return len(self.draft[1].engine.sessions), len(self.target[1].engine.sessions)

    def sessions_left(self, timeout: float = 5.0) -> tuple[int, int]:
        """live_sessions() once both are 0, or when `timeout` has passed: a finished call's
        draft session is closed in the background (DraftLeg.close), so it may outlive the
        call by a moment (seen on a loaded machine)."""
        wait_until(lambda: self.live_sessions() == (0, 0), timeout)
        return self.live_sessions()

    def stop(self):
        for ch in self.channels:
            ch.close()
        self.loop.run(self.coordinator.stop(0))
        for server, servicer in (self.draft, self.target):
            servicer.reaper.cancel()
            self.loop.run(servicer.drain(server, 0))


@contextlib.asynccontextmanager
async def standin_draft(servicer, **client_kw):
    """A stand-in draft service (`servicer`, a real gRPC server on loopback) and a
    DraftClient of it (client_kw: its propose_timeout_s, …)."""
    from coordinator.upstream.clients import DraftClient
    server = grpc.aio.server()
    draft_pb2_grpc.add_DraftServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = DraftClient(f"127.0.0.1:{port}", timeout_s=30, **client_kw)
    try:
        yield client
    finally:
        await client.close()
        await server.stop(0)


def start_stack(loop: LoopThread, draft_lm, target_lm, draft_cfg: dict | None = None,
                target_cfg: dict | None = None, coord_cfg: dict | None = None) -> Stack:
    draft = loop.run(draft_server.start(
        service_config(model=draft_lm.name, **(draft_cfg or {})), draft_lm))
    target = loop.run(target_server.start(
        service_config(model=target_lm.name, **(target_cfg or {})), target_lm))
    coordinator = loop.run(coordinator_server.start(
        coordinator_config(draft[0].port, target[0].port, **(coord_cfg or {}))))
    return Stack(loop, draft, target, coordinator)


async def generate_all(addr: str, requests, concurrency: int | None = None) -> list:
    """Run Generate for every request (at most `concurrency` at a time; None = all at once).
    Each result is (token ids, final stats) or the AioRpcError the call ended with."""
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        sem = asyncio.Semaphore(concurrency or len(requests) or 1)

        async def one(req):
            ids, stats = [], None
            async with sem:
                try:
                    async for msg in stub.Generate(req, timeout=120):
                        if msg.HasField("token"):
                            ids.append(msg.token.id)
                        else:
                            stats = msg.stats
                except grpc.aio.AioRpcError as e:
                    return e
            return ids, stats

        return await asyncio.gather(*(one(r) for r in requests))


@contextlib.contextmanager
def gpu_like_costs(coordinator, draft_step_s: float = 0.001):
    """Give a coordinator's (coordinator.server.Coordinator) adaptive-K controller, for the
    duration, cost fits of a pair where speculation pays (a verify pass 20 ms, rows nearly
    free, a draft step draft_step_s; by default 5% of the verify), held fixed: the tiny
    models' own costs (a draft step as dear as a verify pass) would rightly keep K at 0 and
    leave adaptive rounds untested."""
    adaptive = coordinator.core.adaptive
    measured = adaptive.verify, adaptive.draft
    verify, draft = VerifyCost(decay=1.0), CostCurve(decay=1.0)
    for i in range(20_000):
        sessions = 1 + i % 128
        rows = sessions * (1 + i // 8 % 9)
        verify.observe(sessions, rows, 0.02 + 0.0002 * rows)
        draft.observe(sessions, draft_step_s)
    # held fixed: the tiny models' real costs must not leak in (54 fallback rounds at 1.5 ms
    # a 1-row verify made K=0 look 3x cheaper than K=1 in a fault test)
    verify.observe = draft.observe = lambda *args: None
    adaptive.verify, adaptive.draft = verify, draft
    # the draft's prefill per token too: one measured on a loaded machine (seconds for a
    # few tokens) made opening the draft not pay for a 24-token request
    prefill, adaptive.prefill = adaptive.prefill, draft_step_s / 50
    adaptive.observe_prefill = lambda *args: None
    # and no penalty left by a draft call that timed out earlier on a loaded machine
    timeouts, adaptive._timeouts = adaptive._timeouts, {}
    try:
        yield
    finally:
        adaptive.verify, adaptive.draft = measured
        del adaptive.observe_prefill
        adaptive.prefill, adaptive._timeouts = prefill, timeouts


@contextlib.contextmanager
def draft_opens(stack):
    """Yields the list of the session ids the draft service's engine opens meanwhile (a spy
    on the real engine: it still opens them)."""
    engine = stack.draft[1].engine
    opened, open_many = [], engine.open_many

    def counting_open_many(items):
        opened.extend(item.session_id for item in items)
        return open_many(items)

    engine.open_many = counting_open_many
    try:
        yield opened
    finally:
        engine.open_many = open_many


@contextlib.contextmanager
def coordinator_behind_proxies(loop: LoopThread, stack: Stack, **cfg):
    """A second coordinator (coordinator_config overrides `cfg`) reaching a running stack's
    services through delay proxies; yields ({"draft": proxy, "target": proxy}, coordinator),
    so tests can slow down and cut the links."""
    from bench.delayproxy import DelayProxy

    proxies = {role: DelayProxy(getattr(stack, role)[0].port) for role in ("draft", "target")}
    try:
        coordinator = loop.run(coordinator_server.start(coordinator_config(
            proxies["draft"].port, proxies["target"].port, **cfg)))
        try:
            yield proxies, coordinator
        finally:
            loop.run(coordinator.stop(0))
    finally:
        for proxy in proxies.values():
            proxy.close()


def stream_with_faults(addr: str, req, faults: dict, timeout_s: float = 90,
                       credentials: grpc.ChannelCredentials | None = None) -> tuple:
    """Stream one Generate from the coordinator at addr (over TLS with `credentials`),
    calling faults[n]() once n tokens have arrived; returns (token ids, final stats)."""
    ids, stats = [], None
    with (grpc.insecure_channel(addr) if credentials is None
          else grpc.secure_channel(addr, credentials)) as ch:
        for msg in generator_pb2_grpc.GeneratorStub(ch).Generate(req, timeout=timeout_s):
            if msg.HasField("token"):
                ids.append(msg.token.id)
                if len(ids) in faults:
                    faults[len(ids)]()
            else:
                stats = msg.stats
    return ids, stats


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll predicate() until it holds (True) or timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def with_eos(lm, eos_ids: list[int]):
    """The same loaded model, reporting other EOS ids (to make EOS happen where we want)."""
    return dataclasses.replace(lm, eos_token_ids=eos_ids)


__all__ = ["LoopThread", "Stack", "generate_all", "start_stack", "wait_until", "with_eos",
           "health_pb2"]
