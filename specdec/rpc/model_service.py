"""What the draft and target services share: loading, readiness, session expiry, main()."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import structlog
import torch
from prometheus_client import CollectorRegistry

from ..config import ModelServiceConfig
from ..engine import Engine, OpenItem
from ..errors import SpecdecError, Unavailable
from ..logs import configure_logging
from ..models import LoadedModel, load_model
from ..sampling import SamplingParams
from ..v1 import common_pb2
from .metrics import MetricsServer, ServiceMetrics, serve_metrics
from .server import RunningServer, start_server, wait_for_signal
from .status import item_status, rpc_method
from .tls import server_credentials
from .worker import ModelWorker

log = structlog.get_logger(__name__)


def sampling_from_pb(pb: common_pb2.SamplingParams) -> SamplingParams:
    """An unset message is greedy; top_p 0 (unset) means no nucleus cut."""
    return SamplingParams(pb.temperature, pb.top_k, pb.top_p or 1.0, pb.seed)


class ModelServicer:
    """Base of the draft and target servicers: the engine (once loaded) and its worker,
    and the OpenSession / CloseSession methods both services share."""

    role: str  # "draft" or "target"
    open_response: type  # Open*SessionResponse of the concrete service
    close_response: type  # Close*SessionResponse of the concrete service

    def __init__(self, cfg: ModelServiceConfig):
        self.cfg = cfg
        self.worker = ModelWorker(type(self).__name__)
        self._engine: Engine | None = None
        self.metrics = ServiceMetrics(CollectorRegistry())
        self.metrics_server: MetricsServer | None = None
        self.draining = False  # set on SIGTERM: new sessions get UNAVAILABLE

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise Unavailable("the model is still loading; the health service reports SERVING "
                              "once it is ready")
        return self._engine

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        self.metrics.track_sessions(engine)

    async def timed(self, fn: Callable, *args, op: str | None = None
                    ) -> tuple[object, int, int]:
        """Run fn on the model worker; returns (result, microseconds including queueing,
        fn's own microseconds). op: record fn's own duration in specdec_forward_seconds{op}."""
        def run():
            began = time.perf_counter_ns()
            return fn(*args), time.perf_counter_ns() - began

        start = time.perf_counter_ns()
        result, own_ns = await self.worker.run(run)
        if op is not None:
            self.metrics.forward_seconds.labels(op).observe(own_ns / 1e9)
        return result, (time.perf_counter_ns() - start) // 1000, own_ns // 1000

    @rpc_method
    async def OpenSession(self, request, context):
        if self.draining:
            raise Unavailable(f"the {self.role} service is shutting down and takes no new "
                              f"sessions; retry on another replica")
        items = [OpenItem(i.session_id, list(i.prompt_token_ids), sampling_from_pb(i.sampling),
                          i.max_tokens) for i in request.items]
        outcomes, us, _ = await self.timed(self.engine.open_many, items, op="prefill")
        opened = sum(o.error is None for o in outcomes)
        self.metrics.batch_sessions.labels("prefill").observe(opened)
        self.metrics.sessions_opened.inc(opened)
        return self.open_response(results=[
            common_pb2.OpenSessionResult(session_id=o.session_id, position=o.position,
                                         **item_status(o.error)) for o in outcomes],
            compute_time_us=us)

    @rpc_method
    async def CloseSession(self, request, context):
        ids = list(request.session_ids)
        errors, *_ = await self.timed(self.engine.close_many, ids)
        return self.close_response(results=[
            common_pb2.CloseSessionResult(session_id=sid, **item_status(err))
            for sid, err in zip(ids, errors, strict=True)])

    def model_info(self) -> common_pb2.ModelInfo:
        e = self.engine
        lm = e.lm
        return common_pb2.ModelInfo(
            model_name=lm.name, vocab_size=lm.vocab_size,
            tokenizer_fingerprint=lm.tokenizer_fingerprint, dtype=lm.dtype_name,
            quantization=lm.quantization,
            device=str(lm.device), max_context_length=lm.max_context_length,
            eos_token_ids=lm.eos_token_ids, max_sessions=e.sessions.max_sessions,
            live_sessions=len(e.sessions),
            kv_cache_reserved_bytes=e.reserved_bytes,
            kv_cache_budget_bytes=(e.sessions.max_reserved_tokens or 0) * e.kv_bytes_per_token,
            draining=self.draining)

    async def drain(self, server: RunningServer, grace_s: float) -> None:
        """SIGTERM: NOT_SERVING at once, no new sessions, serve the live ones until they
        close (or grace_s passes), then stop."""
        self.draining = True
        await server.health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace_s
        live = len(self._engine.sessions) if self._engine else 0
        if live:
            log.info("draining", live_sessions=live, grace_s=grace_s)
        while self._engine is not None and len(self._engine.sessions) and \
                time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await server.server.stop(0.5)
        self.worker.shutdown()
        if self.metrics_server:
            self.metrics_server.stop()
        log.info("stopped", live_sessions=len(self._engine.sessions) if self._engine else 0)

    async def expire_sessions(self) -> None:
        """Close sessions idle past the TTL (a coordinator that died leaves them behind)."""
        period = max(0.05, min(30.0, self.cfg.session_ttl_s / 4))
        while True:
            await asyncio.sleep(period)
            if self._engine is not None:
                for sid in await self.worker.run(self._engine.expire):
                    log.info("session expired", session_id=sid, ttl_s=self.cfg.session_ttl_s)


async def start_model_service(cfg: ModelServiceConfig, servicer: ModelServicer,
                              register: Callable[[grpc.aio.Server], None], service_name: str,
                              build_engine: Callable[[LoadedModel], Engine],
                              lm: LoadedModel | None = None) -> RunningServer:
    """Bind and start the server (health NOT_SERVING), load the model (or use `lm`), warm
    up, then report SERVING. Returns once serving."""
    credentials = server_credentials(cfg.tls_cert_file, cfg.tls_key_file,
                                     cfg.tls_client_ca_file)
    server = await start_server(cfg.host, cfg.port, register, [service_name], credentials)
    log.info("listening; loading model", port=server.port, model=cfg.model)
    if lm is None:
        lm = await servicer.worker.run(load_model, cfg.model, cfg.dtype, cfg.device,
                                       cfg.cache_dir, cfg.quantization, cfg.draft_vocab)
    engine = build_engine(lm)
    engine.set_cuda_graphs(cfg.cuda_graphs)  # (captured in warm-up and on first use)
    if cfg.warmup:
        await servicer.worker.run(engine.warmup)
    servicer.attach(engine)
    servicer.reaper = asyncio.create_task(servicer.expire_sessions())
    servicer.metrics_server = serve_metrics(cfg.host, cfg.metrics_port, servicer.metrics.registry)
    await server.set_serving(True)
    log.info("serving", port=server.port, model=lm.name, dtype=lm.dtype_name,
             quantization=lm.quantization,
             device=str(lm.device), vocab_size=lm.vocab_size,
             head_tokens=lm.vocab_size if lm.head_ids is None else len(lm.head_ids),
             metrics_port=servicer.metrics_server.port if servicer.metrics_server else None)
    return server


def main_model_service(cfg: ModelServiceConfig, role: str, start) -> None:
    """Run a draft or target service until SIGTERM / SIGINT (specdec.service_main has parsed
    its flags). start(cfg) starts the service in the running loop and returns
    (RunningServer, servicer)."""
    configure_logging(cfg.log_level, cfg.log_format)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    structlog.contextvars.bind_contextvars(service=role)

    async def serve() -> None:
        server, servicer = await start(cfg)
        await wait_for_signal()
        log.info("shutting down", grace_s=cfg.shutdown_grace_s)
        await servicer.drain(server, cfg.shutdown_grace_s)

    try:
        asyncio.run(serve())
    except SpecdecError as e:
        log.error("cannot start", error=str(e))
        raise SystemExit(2) from None
