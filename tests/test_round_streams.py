"""The round's calls over long-lived streams (ProposeStream, VerifyStream; coordinator
--round-streams): the same answers as the unary calls, errors that end only the stream,
timeouts, services without streams, and the per-round fixed cost the coordinator records."""

import asyncio

import grpc
import pytest

from coordinator.client import generate as client_generate
from coordinator.upstream.clients import UpstreamError
from processes import scrape
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc, generator_pb2, target_pb2
from stack import standin_draft, start_stack
from tiny_models import PROMPTS

MAX_NEW = 24


def open_draft(stub, sid: str, prompt: list[int]) -> None:
    stub.OpenSession(draft_pb2.OpenDraftSessionRequest(items=[common_pb2.OpenSessionItem(
        session_id=sid, prompt_token_ids=prompt, max_tokens=64)]), timeout=30)


def propose(sid: str, position: int, k: int = 2) -> draft_pb2.ProposeRequest:
    return draft_pb2.ProposeRequest(items=[draft_pb2.ProposeItem(
        session_id=sid, position=position, num_tokens=k)])


def test_a_stream_answers_each_message_as_the_unary_call_does(stacks):
    stack = stacks("draft_perturbed")
    stub = stack.draft_stub()
    for sid in ("unary", "stream"):
        open_draft(stub, sid, [5, 6, 7])
    unary = [stub.Propose(propose("unary", 3), timeout=30)]
    unary.append(stub.Propose(propose("unary", 5), timeout=30))
    streamed = list(stub.ProposeStream(iter([propose("stream", 3), propose("stream", 5)]),
                                       timeout=30))
    assert [list(r.results[0].token_ids) for r in streamed] == \
        [list(r.results[0].token_ids) for r in unary]
    assert [r.results[0].position for r in streamed] == [5, 7]
    assert all(r.forward_time_us > 0 and r.compute_time_us >= r.forward_time_us
               for r in streamed)
    stub.CloseSession(draft_pb2.CloseDraftSessionRequest(session_ids=["unary", "stream"]))


def test_an_error_ends_the_stream_with_the_unary_calls_status(stacks):
    stack = stacks("draft_perturbed")
    stub = stack.target_stub()
    stub.OpenSession(target_pb2.OpenTargetSessionRequest(items=[common_pb2.OpenSessionItem(
        session_id="s", prompt_token_ids=[5, 6, 7], max_tokens=64)]), timeout=30)
    try:
        ok = target_pb2.VerifyRequest(items=[target_pb2.VerifyItem(session_id="s", position=3)])
        too_many = target_pb2.VerifyRequest(items=[target_pb2.VerifyItem(session_id="s")] * 65)
        replies = stub.VerifyStream(iter([ok, too_many, ok]), timeout=30)
        first = next(replies)
        assert first.results[0].position == 4
        with pytest.raises(grpc.RpcError) as err:
            next(replies)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "64" in err.value.details()
        # a new stream goes on where the session stands
        again = list(stub.VerifyStream(iter([target_pb2.VerifyRequest(items=[
            target_pb2.VerifyItem(session_id="s", position=4)])]), timeout=30))
        assert again[0].results[0].position == 5
    finally:
        stub.CloseSession(target_pb2.CloseTargetSessionRequest(session_ids=["s"]))


class SlowDraft(draft_pb2_grpc.DraftServiceServicer):
    """A stand-in draft whose stream answers after `delay_s` (empty results)."""

    def __init__(self):
        self.delay_s = 0.0
        self.streams = 0

    async def ProposeStream(self, requests, context):
        self.streams += 1
        async for request in requests:
            await asyncio.sleep(self.delay_s)
            yield draft_pb2.ProposeResponse(batched_sessions=len(request.items))


def test_a_message_that_times_out_resets_the_stream_and_the_next_call_opens_another(loop):
    async def main():
        draft = SlowDraft()
        async with standin_draft(draft, propose_timeout_s=1.0) as client:  # (vs a 30 s hang)
            await client.call("Propose", propose("s", 0))
            await client.call("Propose", propose("s", 0))
            assert draft.streams == 1  # both on one stream
            draft.delay_s = 30.0
            with pytest.raises(UpstreamError, match="no answer within") as err:
                await client.call("Propose", propose("s", 0))
            assert err.value.code == "DEADLINE_EXCEEDED" and client.unanswered
            draft.delay_s = 0.0
            reply = await client.call("Propose", propose("s", 0))
            assert reply.batched_sessions == 1 and draft.streams == 2
    loop.run(main())


def test_a_service_without_streams_is_called_unary(loop):
    """A service from before the streams (no ProposeStream) answers UNIMPLEMENTED there: the
    client uses the unary method from then on."""
    class UnaryOnly(draft_pb2_grpc.DraftServiceServicer):
        async def Propose(self, request, context):
            return draft_pb2.ProposeResponse(batched_sessions=7)

    async def main():
        async with standin_draft(UnaryOnly(), propose_timeout_s=5) as client:
            for _ in range(2):
                assert (await client.call("Propose", propose("s", 0))).batched_sessions == 7
            assert client._stream("Propose") is None
    loop.run(main())


@pytest.fixture(scope="module")
def unary_stack(loop, lms):
    stack = start_stack(loop, lms["draft_perturbed"], lms["target"],
                        coord_cfg={"round_streams": False, "metrics_port": 0})
    yield stack
    stack.stop()


def test_streams_and_unary_calls_give_the_same_tokens(stacks, unary_stack):
    streamed = stacks("draft_perturbed")
    for prompt in PROMPTS[:6]:
        for k in (1, 4):
            req = generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=MAX_NEW,
                                                num_speculative_tokens=k, adaptive_k=False)
            a, _, stats_a = client_generate(streamed.addr, req, timeout_s=60)
            b, _, _ = client_generate(unary_stack.addr, req, timeout_s=60)
            assert a == b, (prompt, k)
            assert 0 < stats_a["forward_time_s"] < stats_a["total_time_s"]


def test_every_round_records_its_fixed_cost(unary_stack):
    port = unary_stack.coordinator.metrics_port

    def fixed() -> tuple[float, float]:
        samples = scrape(port)
        return (samples.get("specdec_round_fixed_seconds_count", 0.0),
                samples.get("specdec_round_fixed_seconds_sum", 0.0))
    count, seconds = fixed()
    req = generator_pb2.GenerateRequest(prompt=PROMPTS[0], max_new_tokens=MAX_NEW,
                                        num_speculative_tokens=3, adaptive_k=False)
    _, _, stats = client_generate(unary_stack.addr, req, timeout_s=60)
    count_after, seconds_after = fixed()
    assert count_after - count == stats["rounds"]
    # the rounds' fixed costs are part of the request's time, and not all of it
    recorded = seconds_after - seconds
    assert 0 < recorded < stats["total_time_s"] - stats["forward_time_s"] + 1e-6
