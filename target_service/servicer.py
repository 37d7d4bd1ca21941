"""TargetService servicer: the engine validates; this converts to/from pb."""

from __future__ import annotations

from specdec.config import ModelServiceConfig
from specdec.models import LoadedModel
from specdec.rpc.model_service import ModelServicer, start_model_service
from specdec.rpc.status import item_status, rpc_method
from specdec.rpc.tolerant import add_tolerant
from specdec.target_engine import TargetEngine, VerifyItem, VerifyOutcome
from specdec.v1 import target_pb2, target_pb2_grpc

SERVICE_NAME = target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name


def item_from_pb(item: target_pb2.VerifyItem) -> VerifyItem:
    answer = item.draft_probs_answer if item.HasField("draft_probs_answer") else None
    return VerifyItem(item.session_id, item.position, list(item.draft_token_ids),
                      list(item.draft_probs), answer, item.resume_rejected)


def outcome_to_pb(o: VerifyOutcome) -> target_pb2.VerifyResult:
    result = target_pb2.VerifyResult(session_id=o.session_id, num_accepted=o.num_accepted,
                                     next_token_id=o.next_token_id, position=o.position,
                                     **item_status(o.error))
    if o.query is not None:
        result.draft_probs_query.index = o.query.index
        result.draft_probs_query.token_ids.extend(o.query.token_ids)
        result.draft_probs_query.all_tokens = o.query.all_tokens
    return result


class TargetServicer(ModelServicer, target_pb2_grpc.TargetServiceServicer):
    role = "target"
    open_response = target_pb2.OpenTargetSessionResponse
    close_response = target_pb2.CloseTargetSessionResponse

    def build_engine(self, lm: LoadedModel) -> TargetEngine:
        return TargetEngine(lm, self.cfg.max_sessions, self.cfg.session_ttl_s,
                            self.cfg.max_proposal_tokens, self.cfg.max_batch_items,
                            self.cfg.max_cache_mb)

    @rpc_method
    async def GetInfo(self, request, context):
        e = self.engine
        return target_pb2.GetTargetInfoResponse(
            model=self.model_info(), max_batch_items=e.max_batch_items,
            max_proposal_tokens=e.max_proposal_tokens)

    @rpc_method
    async def Verify(self, request, context):
        items = [item_from_pb(i) for i in request.items]
        (outcomes, passes, batched), us, own_us = await self.timed(self.engine.verify, items,
                                                                   op="verify")
        if passes:
            self.metrics.batch_sessions.labels("verify").observe(batched)
        return target_pb2.VerifyResponse(results=[outcome_to_pb(o) for o in outcomes],
                                         forward_passes=passes, compute_time_us=us,
                                         batched_sessions=batched, forward_time_us=own_us)

    async def VerifyStream(self, requests, context):
        async for request in requests:
            yield await self.Verify(request, context)

    @rpc_method
    async def Truncate(self, request, context):
        position, *_ = await self.timed(self.engine.truncate, request.session_id,
                                       request.position, request.length)
        return target_pb2.TruncateTargetSessionResponse(position=position)


async def start(cfg: ModelServiceConfig, lm: LoadedModel | None = None):
    """Start a target server in the running event loop; returns (RunningServer, servicer)."""
    servicer = TargetServicer(cfg)
    server = await start_model_service(
        cfg, servicer,
        lambda s: add_tolerant(target_pb2_grpc.add_TargetServiceServicer_to_server, servicer, s),
        SERVICE_NAME, servicer.build_engine, lm)
    return server, servicer
