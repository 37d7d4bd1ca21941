"""Starting the coordinator: find both tiers' replicas, check they agree, serve Generator;
keep the replica sets up to date (health, load, DNS); drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry

from specdec.errors import FailedPrecondition, InvalidArgument
from specdec.models import load_tokenizer, tokenizer_fingerprint
from specdec.rpc.metrics import MetricsServer, serve_metrics
from specdec.rpc.server import RunningServer, start_server
from specdec.rpc.tls import client_tls, server_credentials
from specdec.rpc.tolerant import add_tolerant
from specdec.v1 import generator_pb2, generator_pb2_grpc

from .api.auth import ApiKeys
from .api.body_limit import BodyLimit
from .api.http_server import HttpServer, start_http
from .api.openai_api import OpenAIFrontEnd, create_app
from .api.servicer import GeneratorServicer
from .config import CoordinatorConfig
from .generation.core import GenerationCore, Limits
from .generation.faults import FaultPolicy
from .generation.metrics import CoordinatorMetrics
from .speculation.adaptive import AdaptiveK
from .upstream.addresses import parse_entries
from .upstream.batcher import Scheduler
from .upstream.clients import DraftClient, TargetClient, check_compatible
from .upstream.replicas import ReplicaSet

log = structlog.get_logger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name
HEALTH_INTERVAL_S = 1.0


@dataclass
class Coordinator:
    server: RunningServer
    draft: ReplicaSet
    target: ReplicaSet
    core: GenerationCore
    watcher: asyncio.Task
    metrics_server: MetricsServer | None = None
    http: HttpServer | None = None
    stopped: bool = False

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http else None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_server.port if self.metrics_server else None

    async def stop(self, grace_s: float = 5.0) -> None:
        """Drain: NOT_SERVING at once, new requests get UNAVAILABLE, running ones finish
        for at most grace_s; then stop (sessions of ended requests still being closed get
        a moment more). Stopping again does nothing."""
        if self.stopped:
            return
        self.stopped = True
        self.core.draining = True
        await self.server.health.enter_graceful_shutdown()
        running = self.core.running
        if running:
            log.info("draining", running=running, grace_s=grace_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.core.idle.wait(), grace_s)
        self.watcher.cancel()
        if self.http:
            await self.http.stop()
        await self.server.server.stop(0.5)
        await self.core.services.background.settle()  # (it closes sessions: before the channels)
        await asyncio.gather(self.draft.close(), self.target.close())
        self.core.prompts.close()
        if self.metrics_server:
            self.metrics_server.stop()
        log.info("stopped", unfinished=self.core.running)


async def watch_upstreams(server: RunningServer, core: GenerationCore,
                          metrics: CoordinatorMetrics, interval_s: float = HEALTH_INTERVAL_S):
    """Refresh both replica sets every interval_s. The coordinator is SERVING while some
    target replica is in rotation; no draft replica only degrades it (target-only rounds)."""
    serving: dict[str, bool] = {"draft": True, "target": True}
    while True:
        await asyncio.gather(core.draft.refresh(), core.target.refresh())
        for pool in (core.target, core.draft):
            ok = pool.available
            metrics.upstream_healthy.labels(pool.role).set(int(ok))
            for state, n in pool.counts().items():
                metrics.upstream_replicas.labels(pool.role, state).set(n)
            if ok != serving[pool.role]:
                serving[pool.role] = ok
                (log.info if ok else log.warning)(
                    "upstream health changed", service=pool.role, replicas=pool.describe(),
                    serving=ok, effect=("none" if ok else "NOT_SERVING" if pool.role ==
                                        "target" else "degraded: target-only rounds"))
                if pool.role == "target":
                    core.target_serving = ok
                    if not core.draining:
                        await server.set_serving(ok)
        await asyncio.sleep(interval_s)


def replica_sets(cfg: CoordinatorConfig, scheduler: Scheduler | None,
                 metrics: CoordinatorMetrics, adaptive: AdaptiveK
                 ) -> tuple[ReplicaSet, ReplicaSet]:
    """Both tiers' replica sets; each client that joins reports its errors to the metrics
    and its costs to the K policy, and (lockstep) is dispatched by the scheduler."""
    def added(client) -> None:
        client.on_error = metrics.upstream_error
        client.on_cost = adaptive.observe
        if scheduler is not None:
            scheduler.add(client.lockstep_batchers)

    def removed(client) -> None:
        if scheduler is not None:
            scheduler.remove(client.batchers)

    draft_timeout = cfg.draft_timeout_ms / 1e3 if cfg.draft_timeout_ms > 0 else None
    tls = client_tls(cfg.upstream_ca_file, cfg.upstream_cert_file, cfg.upstream_key_file,
                     cfg.upstream_tls_server_name)
    draft = ReplicaSet("draft", parse_entries(cfg.draft),
                       lambda addr: DraftClient(addr, cfg.rpc_timeout_s, draft_timeout, tls,
                                                cfg.round_streams),
                       cfg.resolve_interval_s, on_added=added, on_removed=removed)
    target = ReplicaSet("target", parse_entries(cfg.target),
                        lambda addr: TargetClient(addr, cfg.rpc_timeout_s, tls, cfg.round_streams),
                        cfg.resolve_interval_s, on_added=added, on_removed=removed)
    return draft, target


async def check_pair(cfg: CoordinatorConfig, draft_info, target_info, tokenizer=None):
    """Refuse a draft/target pair that does not share the target's tokenizer (and ours);
    returns the tokenizer (loaded from the target's model when not given)."""
    check_compatible(draft_info.model, target_info.model)
    if tokenizer is None:
        tokenizer = await asyncio.to_thread(
            load_tokenizer, cfg.tokenizer or target_info.model.model_name, cfg.cache_dir)
    if tokenizer_fingerprint(tokenizer) != target_info.model.tokenizer_fingerprint:
        raise FailedPrecondition("the coordinator's tokenizer differs from the target's; "
                                 "pass --tokenizer with the target's model")
    return tokenizer


def make_limits(cfg: CoordinatorConfig, draft_info, target_info) -> Limits:
    """What requests may ask for: the flags within what both services allow."""
    max_k = min(cfg.max_speculative_tokens, draft_info.max_proposal_tokens,
                target_info.max_proposal_tokens)
    if cfg.default_k > max_k:
        raise InvalidArgument(f"--default-k {cfg.default_k} exceeds the largest K the "
                              f"coordinator and services allow ({max_k})")
    return Limits(
        max_new_tokens=cfg.max_new_tokens_limit, max_k=max_k, default_k=cfg.default_k,
        max_context=min(draft_info.model.max_context_length,
                        target_info.model.max_context_length),
        target_context=target_info.model.max_context_length, adaptive_k=cfg.adaptive_k,
        draft_ahead=cfg.draft_ahead, max_concurrent=cfg.max_concurrent_requests)


async def start(cfg: CoordinatorConfig, tokenizer=None) -> Coordinator:
    """Wait for a replica of each tier, check they are compatible, then serve. Raises
    SpecdecError (FailedPrecondition for an incompatible pair, Unavailable for a tier without
    a serving replica, InvalidArgument for a malformed address or flags)."""
    if cfg.draft_ahead and cfg.schedule != "pipelined":
        raise InvalidArgument("--draft-ahead 1 needs --schedule pipelined (lockstep sends one "
                              "call at a time, so the draft could not work during a verify)")
    try:
        keys = ApiKeys.load(cfg.api_key, cfg.api_key_file)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    scheduler = Scheduler([]) if cfg.schedule == "lockstep" else None
    metrics = CoordinatorMetrics(CollectorRegistry())

    # (lockstep: one K per round at load, RoundK; k_max: what the services allow is checked
    # below, and every session clamps to its own maximum anyway)
    adaptive = AdaptiveK(lockstep=scheduler is not None, k_max=cfg.max_speculative_tokens)
    metrics.track_adaptive(adaptive)

    draft, target = replica_sets(cfg, scheduler, metrics, adaptive)
    try:
        draft_info, target_info = await asyncio.gather(draft.start(cfg.connect_timeout_s),
                                                       target.start(cfg.connect_timeout_s))
        tokenizer = await check_pair(cfg, draft_info, target_info, tokenizer)
        limits = make_limits(cfg, draft_info, target_info)
    except BaseException:
        await asyncio.gather(draft.close(), target.close())
        raise
    policy = FaultPolicy(target_retry_s=cfg.target_retry_s)
    core = GenerationCore(draft, target, tokenizer, set(target_info.model.eos_token_ids),
                          limits, scheduler, policy, metrics, adaptive)
    servicer = GeneratorServicer(core, keys)
    server = await start_server(
        cfg.host, cfg.port,
        lambda s: add_tolerant(generator_pb2_grpc.add_GeneratorServicer_to_server, servicer, s),
        [SERVICE_NAME], server_credentials(cfg.tls_cert_file, cfg.tls_key_file),
        cfg.max_request_bytes)
    metrics_server = serve_metrics(cfg.host, cfg.metrics_port, metrics.registry)
    http = None
    if cfg.http_port >= 0:
        front = OpenAIFrontEnd(core, cfg.served_model_name or target_info.model.model_name,
                               draft_info.model.model_name, cfg.http_timeout_s)
        app = BodyLimit(create_app(front, metrics.registry, keys, bool(cfg.metrics_require_key)),
                        cfg.max_request_bytes)
        http = await start_http(app, cfg.host, cfg.http_port, cfg.tls_cert_file,
                                cfg.tls_key_file)
    await server.set_serving(True)
    watcher = asyncio.create_task(watch_upstreams(server, core, metrics))
    log.info("serving", port=server.port, draft=draft.addrs, target=target.addrs,
             draft_model=draft_info.model.model_name, target_model=target_info.model.model_name,
             max_k=limits.max_k, schedule=cfg.schedule, draft_ahead=cfg.draft_ahead,
             metrics_port=metrics_server.port if metrics_server else None,
             http_port=http.port if http else None, api_keys=len(keys.keys))
    return Coordinator(server, draft, target, core, watcher, metrics_server, http)
