"""Starting the coordinator: connect to both services, check them, serve Generator."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from specdec.errors import FailedPrecondition, InvalidArgument
from specdec.models import load_tokenizer, tokenizer_fingerprint
from specdec.rpc.server import RunningServer, start_server
from specdec.v1 import generator_pb2, generator_pb2_grpc

from .batcher import Scheduler
from .config import CoordinatorConfig
from .servicer import GeneratorServicer, Limits
from .upstream import DraftClient, TargetClient, check_compatible

log = structlog.get_logger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name


@dataclass
class Coordinator:
    server: RunningServer
    draft: DraftClient
    target: TargetClient

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.server.stop(grace_s)
        await asyncio.gather(self.draft.close(), self.target.close())


async def start(cfg: CoordinatorConfig, tokenizer=None) -> Coordinator:
    """Wait for both services, check they are compatible, then serve. Raises SpecdecError
    (FailedPrecondition for an incompatible pair, Unavailable for an unreachable service)."""
    draft = DraftClient(cfg.draft, cfg.rpc_timeout_s)
    target = TargetClient(cfg.target, cfg.rpc_timeout_s)
    try:
        await asyncio.gather(draft.wait_serving(cfg.connect_timeout_s),
                             target.wait_serving(cfg.connect_timeout_s))
        draft_info, target_info = await asyncio.gather(draft.info(), target.info())
        check_compatible(draft_info.model, target_info.model)
        if tokenizer is None:
            tokenizer = await asyncio.to_thread(
                load_tokenizer, cfg.tokenizer or target_info.model.model_name, cfg.cache_dir)
        if tokenizer_fingerprint(tokenizer) != target_info.model.tokenizer_fingerprint:
            raise FailedPrecondition("the coordinator's tokenizer differs from the target's; "
                                     "pass --tokenizer with the target's model")
        max_k = min(cfg.max_speculative_tokens, draft_info.max_proposal_tokens,
                    target_info.max_proposal_tokens)
        if cfg.default_k > max_k:
            raise InvalidArgument(f"--default-k {cfg.default_k} exceeds the largest K the "
                                  f"coordinator and services allow ({max_k})")
    except BaseException:
        await asyncio.gather(draft.close(), target.close())
        raise
    limits = Limits(
        max_new_tokens=cfg.max_new_tokens_limit, max_k=max_k, default_k=cfg.default_k,
        max_context=min(draft_info.model.max_context_length,
                        target_info.model.max_context_length),
        target_context=target_info.model.max_context_length)
    scheduler = (Scheduler(draft.batchers + target.batchers) if cfg.schedule == "lockstep"
                 else None)
    servicer = GeneratorServicer(draft, target, tokenizer, set(target_info.model.eos_token_ids),
                                 limits, scheduler)
    server = await start_server(
        cfg.host, cfg.port,
        lambda s: generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, s), [SERVICE_NAME])
    await server.set_serving(True)
    log.info("serving", port=server.port, draft=cfg.draft, target=cfg.target,
             draft_model=draft_info.model.model_name, target_model=target_info.model.model_name,
             max_k=limits.max_k, schedule=cfg.schedule)
    return Coordinator(server, draft, target)
