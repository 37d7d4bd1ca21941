"""Bad input at scale: hypothesis generates malformed and extreme requests for all three
services; each gets a well-formed answer (a stream, or a status that is not INTERNAL/UNKNOWN,
with a message; per-item codes likewise) and every server stays SERVING."""


import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specdec.v1 import common_pb2, draft_pb2, generator_pb2, target_pb2
from stack import health_pb2, start_stack

EXAMPLES = 100  # per service
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

uint32 = st.one_of(st.integers(0, 16), st.integers(0, 2**32 - 1))
uint64 = st.one_of(st.integers(0, 16), st.integers(0, 2**64 - 1))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, 1.0, -1.0, 0.7, 1e30]))
token_ids = st.lists(st.one_of(st.integers(0, 400), st.integers(0, 2**32 - 1)), max_size=40)
texts = st.one_of(st.text(max_size=60), st.text(max_size=6000),
                  st.sampled_from(["", "def", "\x00", "🙂" * 500, "\ud7ff\ue000\U0010ffff",
                                   "a" * 20000]))


@pytest.fixture(scope="module")
def stack(loop, lms):
    s = start_stack(loop, lms["draft_perturbed"], lms["target"],
                    coord_cfg={"rpc_timeout_s": 10.0})
    yield s
    s.stop()


def check_call(fn, request):
    """Call; returns the reply or None, asserting a well-formed outcome either way."""
    try:
        reply = fn(request, timeout=30)
    except grpc.RpcError as e:
        assert e.code() not in BAD_CODES, (e.code(), e.details(), request)
        assert e.details(), (e.code(), request)
        return None
    for r in getattr(reply, "results", []):
        assert r.code != grpc.StatusCode.INTERNAL.value[0], (r.message, request)
        assert r.code == 0 or r.message, (r, request)
    return reply


def assert_all_serving(stack):
    for which in ("draft", "target", "coordinator"):
        assert stack.health(which) == health_pb2.HealthCheckResponse.SERVING


generate_requests = st.builds(
    generator_pb2.GenerateRequest, prompt=texts,
    max_new_tokens=st.one_of(st.integers(0, 6), uint32),
    num_speculative_tokens=st.one_of(st.none(), st.integers(0, 8), uint32),
    temperature=floats, top_k=st.one_of(st.integers(-3, 50), st.integers(-2**31, 2**31 - 1)),
    top_p=st.one_of(st.none(), floats), seed=st.one_of(st.none(), uint64),
    stop=st.lists(st.one_of(st.text(max_size=8), st.just("")), max_size=40))


@SETTINGS
@given(req=generate_requests)
def test_generate_answers_every_request_cleanly(stack, req):
    stub = stack.generator()
    try:
        messages = list(stub.Generate(req, timeout=30))
        assert messages[-1].HasField("stats")
        assert messages[-1].stats.generated_tokens == len(messages) - 1
    except grpc.RpcError as e:
        assert e.code() not in BAD_CODES, (e.code(), e.details(), req)
        assert e.details()
    # (a failed generation closes its sessions in the background, right after its status)
    assert stack.sessions_left(timeout=30) == (0, 0)  # (the wait only bounds a hang)


def sampling():
    return st.builds(common_pb2.SamplingParams, temperature=floats, top_k=uint32,
                     top_p=floats, seed=uint64)


def truncate_or_close(stub, data, ids, kind, truncate_request, close_request):
    if kind == "truncate":
        check_call(stub.Truncate, truncate_request(
            session_id=data.draw(ids), position=data.draw(uint32), length=data.draw(uint32)))
    else:
        check_call(stub.CloseSession, close_request(
            session_ids=data.draw(st.lists(ids, max_size=70))))


def open_items(session_ids):
    return st.lists(st.builds(common_pb2.OpenSessionItem, session_id=session_ids,
                              prompt_token_ids=token_ids, sampling=sampling(),
                              max_tokens=uint32), max_size=70)


@SETTINGS
@given(data=st.data())
def test_draft_answers_every_request_cleanly(stack, data):
    draft = stack.draft_stub()
    # one real session, so stale positions, rollbacks and duplicates meet real state
    (real,) = check_call(draft.OpenSession, draft_pb2.OpenDraftSessionRequest(items=[
        common_pb2.OpenSessionItem(prompt_token_ids=[1, 2, 3])])).results
    ids = st.one_of(st.just(real.session_id), st.text(max_size=12), st.just(""))
    kind = data.draw(st.sampled_from(["open", "propose", "probs", "truncate", "close"]))
    if kind == "open":
        check_call(draft.OpenSession, draft_pb2.OpenDraftSessionRequest(
            items=data.draw(open_items(ids))))
    elif kind == "propose":
        check_call(draft.Propose, draft_pb2.ProposeRequest(items=data.draw(st.lists(st.builds(
            draft_pb2.ProposeItem, session_id=ids, position=uint32,
            truncate_to=st.one_of(st.none(), uint32), append_token_ids=token_ids,
            num_tokens=uint32), max_size=70))))
    elif kind == "probs":
        check_call(draft.GetProbs, draft_pb2.GetDraftProbsRequest(items=data.draw(st.lists(
            st.builds(draft_pb2.DraftProbsItem, session_id=ids, position=uint32, index=uint32,
                      token_ids=token_ids, all_tokens=st.booleans()), max_size=70))))
    else:
        truncate_or_close(draft, data, ids, kind, draft_pb2.TruncateDraftSessionRequest,
                          draft_pb2.CloseDraftSessionRequest)
    draft.CloseSession(draft_pb2.CloseDraftSessionRequest(
        session_ids=[real.session_id]))
    assert_all_serving(stack)


@SETTINGS
@given(data=st.data())
def test_target_answers_every_request_cleanly(stack, data):
    target = stack.target_stub()
    temperature = data.draw(st.sampled_from([0.0, 1.0]))
    (real,) = check_call(target.OpenSession, target_pb2.OpenTargetSessionRequest(items=[
        common_pb2.OpenSessionItem(prompt_token_ids=[1, 2, 3], sampling=common_pb2.SamplingParams(
            temperature=temperature, seed=1))])).results
    ids = st.one_of(st.just(real.session_id), st.text(max_size=12), st.just(""))
    kind = data.draw(st.sampled_from(["open", "verify", "truncate", "close"]))
    if kind == "open":
        check_call(target.OpenSession, target_pb2.OpenTargetSessionRequest(
            items=data.draw(open_items(ids))))
    elif kind == "verify":
        check_call(target.Verify, target_pb2.VerifyRequest(items=data.draw(st.lists(st.builds(
            target_pb2.VerifyItem, session_id=ids, position=uint32, draft_token_ids=token_ids,
            draft_probs=st.lists(floats, max_size=40),
            draft_probs_answer=st.one_of(st.none(), st.binary(max_size=64))), max_size=70))))
    else:
        truncate_or_close(target, data, ids, kind, target_pb2.TruncateTargetSessionRequest,
                          target_pb2.CloseTargetSessionRequest)
    target.CloseSession(target_pb2.CloseTargetSessionRequest(session_ids=[real.session_id]))
    assert_all_serving(stack)


def test_invalid_utf8_gets_invalid_argument_on_every_service(stack):
    """A non-Python client can send a string field holding invalid UTF-8; grpcio alone would
    answer INTERNAL ("Exception deserializing request!")."""
    bad_prompt = b"\x0a\x03\xff\xfe\x41\x10\x04"  # GenerateRequest{prompt: <ff fe 41>, ...}
    bad_ids = b"\x0a\x02\xc3\x28"  # Close*SessionRequest{session_ids: [<c3 28>]}
    calls = [(stack.coordinator.port, "/specdec.v1.Generator/Generate", bad_prompt, True),
             (stack.draft[0].port, "/specdec.v1.DraftService/CloseSession", bad_ids, False),
             (stack.target[0].port, "/specdec.v1.TargetService/CloseSession", bad_ids, False)]
    for port, method, payload, streaming in calls:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = (ch.unary_stream if streaming else ch.unary_unary)(method)
            with pytest.raises(grpc.RpcError) as e:
                result = call(payload, timeout=10)
                if streaming:
                    list(result)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, e.value)
            assert "UTF-8" in e.value.details(), e.value.details()
    assert_all_serving(stack)


def test_every_batched_service_call_is_capped_at_max_batch_items(stack):
    """Closes and probability queries too, not only opens, proposals and verifies: one call
    cannot make a service do unbounded work."""
    too_many = stack.draft[1].engine.max_batch_items + 1
    ids = [f"s{i}" for i in range(too_many)]
    calls = [
        (stack.draft_stub().CloseSession, draft_pb2.CloseDraftSessionRequest(session_ids=ids)),
        (stack.target_stub().CloseSession, target_pb2.CloseTargetSessionRequest(session_ids=ids)),
        (stack.draft_stub().GetProbs, draft_pb2.GetDraftProbsRequest(items=[
            draft_pb2.DraftProbsItem(session_id=i) for i in ids])),
        (stack.draft_stub().CloseSession, draft_pb2.CloseDraftSessionRequest()),  # none at all
    ]
    for call, request in calls:
        with pytest.raises(grpc.RpcError) as e:
            call(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert "item" in e.value.details()
    assert_all_serving(stack)
