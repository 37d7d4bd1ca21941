"""Bad input gets a clear status, and every server stays healthy afterwards."""

import grpc
import pytest

from coordinator import server as coordinator_server
from specdec.errors import FailedPrecondition, Unavailable
from specdec.v1 import common_pb2, draft_pb2, generator_pb2, target_pb2
from stack import coordinator_config, health_pb2


def generate_error(stack, **fields) -> grpc.RpcError:
    req = generator_pb2.GenerateRequest(**{"prompt": "def", "max_new_tokens": 4, **fields})
    with pytest.raises(grpc.RpcError) as info:
        list(stack.generator().Generate(req, timeout=30))
    return info.value


@pytest.mark.parametrize("fields, code, words", [
    ({"prompt": ""}, grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty"),
    ({"max_new_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens must be in [1, 512]"),
    ({"max_new_tokens": 513}, grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens must be in"),
    ({"num_speculative_tokens": 9}, grpc.StatusCode.INVALID_ARGUMENT, "must be in [0, 8]"),
    ({"temperature": -1}, grpc.StatusCode.INVALID_ARGUMENT, "temperature must be a number >= 0"),
    ({"temperature": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "temperature must be"),
    ({"top_p": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "top_p must be in (0, 1]"),
    ({"temperature": 0.7, "top_p": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "top_p must be in"),
    ({"temperature": 0.7, "top_k": -1}, grpc.StatusCode.INVALID_ARGUMENT, "top_k must be >= 0"),
    ({"prompt": "the quick brown fox " * 60}, grpc.StatusCode.INVALID_ARGUMENT, "context of 192"),
    ({"max_new_tokens": 200}, grpc.StatusCode.INVALID_ARGUMENT, "exceeds the models' context"),
])
def test_generate_rejects_bad_requests(stacks, fields, code, words):
    stack = stacks("draft_unrelated")
    err = generate_error(stack, **fields)
    assert err.code() == code and words in err.details(), err.details()
    assert stack.health("coordinator") == health_pb2.HealthCheckResponse.SERVING


def test_services_reject_unknown_closed_and_stale_sessions(stacks):
    stack = stacks("draft_unrelated")
    draft, target = stack.draft_stub(), stack.target_stub()
    def propose(**fields):
        (result,) = draft.Propose(draft_pb2.ProposeRequest(
            items=[draft_pb2.ProposeItem(**fields)])).results
        return result

    result = propose(session_id="nope", position=1, num_tokens=1)
    assert result.code == grpc.StatusCode.NOT_FOUND.value[0] and "nope" in result.message

    (opened,) = draft.OpenSession(draft_pb2.OpenDraftSessionRequest(
        items=[common_pb2.OpenSessionItem(prompt_token_ids=[1, 2, 3], max_tokens=10)])).results
    info = draft.GetInfo(draft_pb2.GetDraftInfoRequest()).model
    per_token = stack.draft[1].engine.kv_bytes_per_token
    assert info.live_sessions == 1 and info.kv_cache_reserved_bytes == 10 * per_token > 0
    result = propose(session_id=opened.session_id, position=5, num_tokens=2)
    assert result.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "holds 3 tokens but the call expects position 5" in result.message
    with pytest.raises(grpc.RpcError) as e:
        draft.Propose(draft_pb2.ProposeRequest())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        draft.Truncate(draft_pb2.TruncateDraftSessionRequest(session_id=opened.session_id,
                                                             position=3, length=4))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (closed,) = draft.CloseSession(draft_pb2.CloseDraftSessionRequest(
        session_ids=[opened.session_id])).results
    assert closed.code == 0
    (closed,) = draft.CloseSession(draft_pb2.CloseDraftSessionRequest(
        session_ids=[opened.session_id])).results
    assert closed.code == 0  # closing is idempotent
    info = draft.GetInfo(draft_pb2.GetDraftInfoRequest()).model
    assert info.live_sessions == 0 and info.kv_cache_reserved_bytes == 0 and not info.draining
    result = propose(session_id=opened.session_id, position=3, num_tokens=1)
    assert result.code == grpc.StatusCode.NOT_FOUND.value[0]

    reply = target.Verify(target_pb2.VerifyRequest(items=[
        target_pb2.VerifyItem(session_id="gone", position=4, draft_token_ids=[1])]))
    assert reply.results[0].code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "gone" in reply.results[0].message
    (bad,) = target.OpenSession(target_pb2.OpenTargetSessionRequest(
        items=[common_pb2.OpenSessionItem(prompt_token_ids=[1, 99999])])).results
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "outside the vocabulary [0, 320)" in bad.message

    for which in ("draft", "target", "coordinator"):
        assert stack.health(which) == health_pb2.HealthCheckResponse.SERVING
    assert stack.sessions_left() == (0, 0)


def test_coordinator_refuses_services_whose_vocabularies_differ(loop, lms):
    from stack import start_stack

    with pytest.raises(FailedPrecondition, match="tokenizers differ .vocabulary or special"):
        start_stack(loop, lms["other_vocab"], lms["target"])


def test_coordinator_start_fails_clearly_when_a_service_is_unreachable(loop, stacks):
    stack = stacks("draft_unrelated")
    cfg = coordinator_config(1, stack.target[0].port, connect_timeout_s=1.0)
    with pytest.raises(Unavailable, match=r"draft service at 127.0.0.1:1 not SERVING"):
        loop.run(coordinator_server.start(cfg))
