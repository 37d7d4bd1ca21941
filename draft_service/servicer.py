"""DraftService servicer: validates nothing itself; the engine does. Converts to/from pb."""

from __future__ import annotations

from specdec.config import ModelServiceConfig
from specdec.draft_engine import DraftEngine, ProposeItem, ProposeOutcome, ProposerConfig
from specdec.models import LoadedModel
from specdec.rpc.metrics import track_draft
from specdec.rpc.model_service import ModelServicer, start_model_service
from specdec.rpc.status import item_status, rpc_method
from specdec.rpc.tolerant import add_tolerant
from specdec.v1 import draft_pb2, draft_pb2_grpc

SERVICE_NAME = draft_pb2.DESCRIPTOR.services_by_name["DraftService"].full_name


def item_from_pb(item: draft_pb2.ProposeItem) -> ProposeItem:
    truncate_to = item.truncate_to if item.HasField("truncate_to") else None
    return ProposeItem(item.session_id, item.position, truncate_to, list(item.append_token_ids),
                       item.num_tokens)


def outcome_to_pb(o: ProposeOutcome) -> draft_pb2.ProposeResult:
    return draft_pb2.ProposeResult(session_id=o.session_id, token_ids=o.token_ids,
                                   position=o.position, draft_probs=o.draft_probs,
                                   **item_status(o.error))


class DraftServicer(ModelServicer, draft_pb2_grpc.DraftServiceServicer):
    role = "draft"
    open_response = draft_pb2.OpenDraftSessionResponse
    close_response = draft_pb2.CloseDraftSessionResponse

    def build_engine(self, lm: LoadedModel) -> DraftEngine:
        proposer = ProposerConfig(self.cfg.proposer, self.cfg.ngram_max, self.cfg.ngram_min,
                                  self.cfg.min_confidence)
        return DraftEngine(lm, self.cfg.max_sessions, self.cfg.session_ttl_s,
                           self.cfg.max_proposal_tokens, self.cfg.max_batch_items,
                           self.cfg.max_cache_mb, proposer=proposer)

    def attach(self, engine: DraftEngine) -> None:
        super().attach(engine)
        track_draft(self.metrics.registry, engine)

    @rpc_method
    async def GetInfo(self, request, context):
        return draft_pb2.GetDraftInfoResponse(
            model=self.model_info(), max_proposal_tokens=self.engine.max_proposal_tokens,
            max_batch_items=self.engine.max_batch_items)

    @rpc_method
    async def Propose(self, request, context):
        items = [item_from_pb(i) for i in request.items]
        (outcomes, passes), us, own_us = await self.timed(self.engine.propose, items,
                                                          op="propose")
        batched = sum(o.error is None for o in outcomes)
        self.metrics.batch_sessions.labels("propose").observe(batched)
        return draft_pb2.ProposeResponse(
            results=[outcome_to_pb(o) for o in outcomes], forward_passes=passes,
            compute_time_us=us, batched_sessions=batched, forward_time_us=own_us)

    async def ProposeStream(self, requests, context):
        async for request in requests:
            yield await self.Propose(request, context)

    @rpc_method
    async def GetProbs(self, request, context):
        items = [(i.session_id, i.position, i.index, list(i.token_ids), i.all_tokens)
                 for i in request.items]
        outcomes, *_ = await self.timed(self.engine.get_probs_many, items)
        return draft_pb2.GetDraftProbsResponse(results=[
            draft_pb2.DraftProbsResult(session_id=item[0], probs=probs, **item_status(err))
            for item, (probs, err) in zip(items, outcomes, strict=True)])

    @rpc_method
    async def Truncate(self, request, context):
        position, *_ = await self.timed(self.engine.truncate, request.session_id,
                                       request.position, request.length)
        return draft_pb2.TruncateDraftSessionResponse(position=position)


async def start(cfg: ModelServiceConfig, lm: LoadedModel | None = None):
    """Start a draft server in the running event loop; returns (RunningServer, servicer)."""
    servicer = DraftServicer(cfg)
    server = await start_model_service(
        cfg, servicer,
        lambda s: add_tolerant(draft_pb2_grpc.add_DraftServiceServicer_to_server, servicer, s),
        SERVICE_NAME, servicer.build_engine, lm)
    return server, servicer
