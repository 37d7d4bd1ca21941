"""Links cut and slowed mid-stream, through proxies: adaptive K and drafting ahead with the
draft and target links cut and restored; a draft slower than its budget for a moment. The
output stays the target's, token for token."""

import threading
import time

import pytest

from coordinator.client import generate as client_generate
from specdec.v1 import draft_pb2, generator_pb2
from stack import coordinator_behind_proxies, gpu_like_costs, stream_with_faults, wait_until

CONFIGS = {
    "adaptive": {"adaptive_k": True},
    "adaptive+ahead": {"adaptive_k": True, "schedule": "pipelined", "draft_ahead": True},
}


def request(k: int, **fields):
    return generator_pb2.GenerateRequest(prompt="def", max_new_tokens=150,
                                         num_speculative_tokens=k, **fields)


def cut(proxy):
    proxy.upstream_port, proxy.real_port = 1, proxy.upstream_port  # nothing listens on 1
    proxy.cut()


def restore(proxy):
    proxy.upstream_port = proxy.real_port


def restore_later(proxy, seconds: float):
    """(no token arrives while the target is cut off, so restore it on a timer)"""
    threading.Timer(seconds, restore, (proxy,)).start()


@pytest.mark.parametrize("config", CONFIGS)
def test_links_cut_and_restored_mid_stream_keep_the_output(loop, stacks, config):
    stack = stacks("draft_perturbed")
    reference, _, _ = client_generate(stack.addr, request(0), timeout_s=60)
    with coordinator_behind_proxies(loop, stack, **CONFIGS[config]) as (proxies, coordinator), \
            gpu_like_costs(coordinator):
        addr = f"127.0.0.1:{coordinator.port}"
        proxies["target"].delay_s = 0.003  # so the stream outlasts the faults
        draft, target = proxies["draft"], proxies["target"]
        ids, stats = stream_with_faults(addr, request(8, adaptive_k=True),
                            {5: lambda: cut(draft), 25: lambda: restore(draft),
                             60: lambda: (cut(target), restore_later(target, 0.3))})
        assert ids == reference
        assert stats.proposed_draft_tokens > 0 and stats.draft_fallback_rounds > 0
        assert stats.draft_reopens >= 1  # speculation resumed after the draft came back
        assert stats.target_reopens + stats.draft_fallback_rounds > 0
        if CONFIGS[config].get("draft_ahead"):
            assert stats.ahead_used_blocks + stats.ahead_discarded_blocks > 0
        # sessions the cut links left behind are closed once the links are back
        assert wait_until(lambda: stack.live_sessions() == (0, 0), timeout=15), \
            stack.live_sessions()


def test_a_draft_slow_for_a_moment_is_resynchronised_not_reopened(loop, stacks):
    """A Propose that times out leaves the draft session in place: once the draft answers
    again the same call is sent again (answered from the service's memory of it) and
    speculation resumes, without re-opening the session (a prefill of the whole history)."""
    stack = stacks("draft_perturbed")
    reference, _, _ = client_generate(stack.addr, request(0), timeout_s=60)
    with coordinator_behind_proxies(loop, stack, draft_timeout_ms=300, metrics_port=0) \
            as (proxies, coordinator):
        addr = f"127.0.0.1:{coordinator.port}"
        proxies["target"].delay_s = 0.003
        draft = proxies["draft"]
        seen = {}

        def fast_once_a_propose_timed_out(client):
            # The draft is fast again as the coordinator sees the timeout, in its own error
            # path: before the re-synchronising Propose (a backoff later), however slow the
            # machine. (Polling for the timeout from here raced that backoff.)
            observed = client.on_error

            def on_error(role: str, code: str) -> None:
                observed(role, code)
                if code == "DEADLINE_EXCEEDED" and "timeout" not in seen:
                    seen["timeout"] = True
                    draft.delay_s = 0
            client.on_error = on_error

        for replica in coordinator.draft.replicas.values():
            fast_once_a_propose_timed_out(replica.client)

        def slow():
            draft.delay_s = 0.4  # a round trip of ~0.8 s: past the 300 ms budget

        ids, stats = stream_with_faults(addr, request(4), {5: slow})
        assert seen.get("timeout"), "no Propose timed out while the draft was slow"
        assert ids == reference
        assert stats.draft_fallback_reason == "timeout" and stats.draft_reopens == 0
        proposed_before_the_fault = 4 * 2  # (at most two rounds before token 5)
        assert stats.proposed_draft_tokens > proposed_before_the_fault  # it resumed
        assert wait_until(lambda: stack.live_sessions() == (0, 0), timeout=15), \
            stack.live_sessions()


def test_stopping_ends_the_closes_still_retrying(loop, stacks):
    """A session the coordinator could not close (its draft link cut) is retried in the
    background; stopping the coordinator gives that a moment, then cancels it, instead of
    leaving it running on the loop (the service's session TTL is the backstop)."""
    stack = stacks("draft_perturbed")
    with coordinator_behind_proxies(loop, stack) as (proxies, coordinator):
        addr = f"127.0.0.1:{coordinator.port}"
        proxies["target"].delay_s = 0.003
        ids, stats = stream_with_faults(addr, request(4), {5: lambda: cut(proxies["draft"])})
        assert len(ids) == 150 and stats.draft_fallback_rounds > 0
        closing = [t for r in coordinator.draft.replicas.values()
                   for t in r.client.background_tasks]
        assert closing, "the lost draft session should still be being closed"
        started = time.monotonic()
        loop.run(coordinator.stop(0))
        # stop(0) gives background closes 2 s and the server 0.5 s: 4x that bounds a hang
        assert time.monotonic() - started < 10
        assert all(t.done() for t in closing)
    # the session the stopped coordinator gave up on is left to the TTL: close it here
    left_behind = list(stack.draft[1].engine.sessions)
    assert len(left_behind) == 1 and stack.live_sessions()[1] == 0
    stack.draft_stub().CloseSession(
        draft_pb2.CloseDraftSessionRequest(session_ids=left_behind), timeout=10)
    assert stack.live_sessions() == (0, 0)
