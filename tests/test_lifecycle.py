"""Sessions are closed on success, error and client cancel; upstream failures surface clearly."""


import grpc
import pytest

from coordinator.client import generate as client_generate
from specdec.v1 import generator_pb2
from stack import start_stack, wait_until


def test_client_cancel_closes_both_sessions(stacks):
    stack = stacks("draft_perturbed")
    call = stack.generator().Generate(generator_pb2.GenerateRequest(
        prompt="def", max_new_tokens=150, num_speculative_tokens=2))
    for _ in range(3):
        next(call)
    assert stack.live_sessions() == (1, 1)
    call.cancel()
    assert wait_until(lambda: stack.live_sessions() == (0, 0)), stack.live_sessions()


def test_draft_down_means_target_only_rounds_with_the_same_output(loop, lms):
    stack = start_stack(loop, lms["draft_perturbed"], lms["target"])
    try:
        loop.run(stack.draft[0].stop(0))  # inject the failure: the draft server goes away
        ids, _, stats = client_generate(stack.addr, generator_pb2.GenerateRequest(
            prompt="def", max_new_tokens=8, num_speculative_tokens=3), timeout_s=30)
        alone, _, alone_stats = client_generate(stack.addr, generator_pb2.GenerateRequest(
            prompt="def", max_new_tokens=8, num_speculative_tokens=0), timeout_s=30)
        assert ids == alone and len(ids) == 8
        assert stats["draft_fallback_rounds"] == 7  # the 8th round wants no proposals
        assert stats["draft_fallback_reason"] == "unavailable"
        # a dead draft must not slow rounds down: no round waits on it (a wait for its first
        # Propose budget, 2 s, would show); 3x the target-only run, plus a second for the
        # one failed connection to it
        assert stats["total_time_s"] < 3 * alone_stats["total_time_s"] + 1.0, \
            (stats["total_time_s"], alone_stats["total_time_s"])
        assert len(stack.target[1].engine.sessions) == 0  # the target's session was closed
    finally:
        stack.stop()


def test_session_limit_gives_resource_exhausted_and_running_requests_finish(loop, lms):
    stack = start_stack(loop, lms["draft_identical"], lms["target"],
                        target_cfg={"max_sessions": 1})
    try:
        running = stack.generator().Generate(generator_pb2.GenerateRequest(
            prompt="def", max_new_tokens=60, num_speculative_tokens=2))
        first = next(running)
        with pytest.raises(grpc.RpcError) as e:
            client_generate(stack.addr, generator_pb2.GenerateRequest(
                prompt="class", max_new_tokens=4, num_speculative_tokens=2), timeout_s=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-sessions" in e.value.details()
        rest = list(running)
        assert rest[-1].stats.generated_tokens == 60 and first.HasField("token")
    finally:
        stack.stop()
