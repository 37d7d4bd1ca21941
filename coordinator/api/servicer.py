"""The Generator servicer: validates requests, runs the decode loop, streams pb messages."""

from __future__ import annotations

import contextlib

import grpc
import structlog

from specdec.errors import InvalidArgument, SpecdecError
from specdec.rpc.status import status_code
from specdec.v1 import generator_pb2, generator_pb2_grpc

from ..generation.core import GenerateArgs, GenerationCore
from ..generation.decode import Finish, Stats
from .auth import UNAUTHENTICATED_MESSAGE, ApiKeys, bearer

log = structlog.get_logger(__name__)

_FINISH_PB = {
    Finish.LENGTH: generator_pb2.FINISH_REASON_LENGTH,
    Finish.STOP: generator_pb2.FINISH_REASON_STOP,
    Finish.EOS: generator_pb2.FINISH_REASON_EOS,
}


async def args_from_pb(req: generator_pb2.GenerateRequest, core: GenerationCore
                       ) -> GenerateArgs:
    if not req.prompt:
        raise InvalidArgument("prompt is empty")
    return GenerateArgs(
        await core.tokenize(req.prompt), req.max_new_tokens,
        req.num_speculative_tokens if req.HasField("num_speculative_tokens") else None,
        req.temperature, req.top_k, req.top_p if req.HasField("top_p") else None,
        req.seed if req.HasField("seed") else None, tuple(req.stop),
        req.adaptive_k if req.HasField("adaptive_k") else None)


def stats_to_pb(s: Stats) -> generator_pb2.GenerationStats:
    return generator_pb2.GenerationStats(
        finish_reason=_FINISH_PB[s.finish], prompt_tokens=s.prompt_tokens,
        generated_tokens=s.generated_tokens, rounds=s.rounds, proposed_draft_tokens=s.proposed,
        accepted_draft_tokens=s.accepted, acceptance_rate=s.acceptance_rate,
        mean_accepted_length=s.mean_accepted_length,
        time_to_first_token_s=s.time_to_first_token_s, total_time_s=s.total_time_s,
        draft_time_s=s.draft_time_s, verify_time_s=s.verify_time_s,
        coordinator_time_s=s.coordinator_time_s, session_id=s.session_id, seed=s.seed,
        wire_bytes=s.wire_bytes, mean_verify_batch=s.mean_verify_batch,
        proposed_at_position=s.proposed_at, accepted_at_position=s.accepted_at,
        draft_fallback_rounds=s.draft_fallback_rounds,
        draft_fallback_reason=s.draft_fallback_reason, draft_reopens=s.draft_reopens,
        target_reopens=s.target_reopens, ahead_used_blocks=s.ahead_used,
        ahead_discarded_blocks=s.ahead_discarded, forward_time_s=s.forward_time_s)


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    """Converts GenerateRequest / GenerateResponse; GenerationCore does the rest."""

    def __init__(self, core: GenerationCore, keys: ApiKeys = ApiKeys()):
        self.core, self.keys = core, keys

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        if self.keys.required:
            metadata = dict(context.invocation_metadata() or ())
            if not self.keys.allows(bearer(metadata.get("authorization"))):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        try:
            args = await args_from_pb(request, self.core)
            events = self.core.stream(args, context.time_remaining())
            per_round = request.token_grouping == generator_pb2.TOKEN_GROUPING_ROUND
            async with contextlib.aclosing(events):
                async for event in events:
                    if isinstance(event, Stats):
                        yield generator_pb2.GenerateResponse(stats=stats_to_pb(event))
                    elif per_round:
                        yield generator_pb2.GenerateResponse(tokens=generator_pb2.GeneratedTokens(
                            ids=[t.id for t in event], text="".join(t.text for t in event)))
                    else:
                        for t in event:
                            yield generator_pb2.GenerateResponse(
                                token=generator_pb2.GeneratedToken(id=t.id, text=t.text))
        except SpecdecError as e:
            await context.abort(status_code(e), str(e))
        except Exception as e:  # (logged with its traceback by the core)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"generation failed: {type(e).__name__}: {e}")
