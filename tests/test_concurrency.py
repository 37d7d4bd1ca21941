"""Many concurrent generations: batched forward passes, exact outputs, clean limits."""

import asyncio

import grpc
import pytest

from coordinator.speculation.round_k import RoundK
from specdec.v1 import common_pb2, generator_pb2, target_pb2
from stack import draft_opens, generate_all, start_stack, wait_until
from tiny_models import PROMPTS


def request(prompt: str, k: int, max_new: int, **sampling) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new,
                                         num_speculative_tokens=k, **sampling)


def sixteen_requests():
    """Fixed K from 0 to 8, and adaptive K (odd ones) up to the same caps."""
    ks = [0, 1, 2, 3, 4, 6, 8, 0, 1, 2, 3, 4, 5, 7, 8, 2]
    return [request(PROMPTS[i], ks[i], 8 + 3 * i, adaptive_k=bool(i % 2)) for i in range(16)]


def test_sixteen_concurrent_generations_equal_their_lone_runs(stacks, loop):
    stack = stacks("draft_perturbed")
    reqs = sixteen_requests()
    alone = [loop.run(generate_all(stack.addr, [r]))[0] for r in reqs]
    together = loop.run(generate_all(stack.addr, reqs))
    for req, (ids_alone, _), (ids_together, _) in zip(reqs, alone, together, strict=True):
        assert ids_together == ids_alone, (req.prompt, req.num_speculative_tokens)
    # batching really happened: requests shared the target's forward passes (lockstep waits
    # for every running generation's call, so this holds however slow the machine) ...
    assert max(stats.mean_verify_batch for _, stats in together) > 1
    # ... and stats stayed per request (a K=0 request never counts proposals)
    for req, (_, stats) in zip(reqs, together, strict=True):
        if req.num_speculative_tokens == 0:
            assert stats.proposed_draft_tokens == 0 and stats.rounds == stats.generated_tokens
    assert no_sessions_left(stack)


class RoundsAt(RoundK):
    """Every round at load takes K = k: where RoundK settles once it measured k fastest."""

    def __init__(self, k: int):
        super().__init__()
        self.fixed = k

    def take(self, measures: bool = True) -> int:
        super().take(measures)
        return self.fixed


def test_at_load_adaptive_sessions_open_their_draft_once_a_round_asks(loop, lms):
    """Under lockstep at load, an adaptive session opens its draft session only when a
    round first asks for proposals, after its first token: where the rounds' K stays 0, the
    draft never prefills the prompts at all. Either way the output is the target's, and the
    rounds before the draft is ready count as neither fallbacks nor re-opens."""
    stack = start_stack(loop, lms["draft_perturbed"], lms["target"])
    try:
        reqs = [request(PROMPTS[i], 4, 32, adaptive_k=True) for i in range(8)]
        reference = [loop.run(generate_all(stack.addr, [request(r.prompt, 0, 32)]))[0][0]
                     for r in reqs]
        adaptive = stack.coordinator.core.adaptive
        for k in (0, 2):
            adaptive.rounds = RoundsAt(k)
            with draft_opens(stack) as opened:
                results = loop.run(generate_all(stack.addr, reqs))
            assert [ids for ids, _ in results] == reference, k
            for _, stats in results:
                assert stats.draft_fallback_rounds == 0 and stats.draft_reopens == 0, k
                assert stats.mean_verify_batch > 1.5, k  # (they did run at load)
                assert (stats.proposed_draft_tokens > 0) == (k > 0), k
            assert len(opened) == (8 if k else 0), k  # each session opened once, or never
            assert no_sessions_left(stack)
    finally:
        stack.stop()


def test_target_reports_sessions_per_forward_pass(stacks):
    stack = stacks("draft_perturbed")
    target = stack.target_stub()
    opened = target.OpenSession(target_pb2.OpenTargetSessionRequest(items=[
        common_pb2.OpenSessionItem(prompt_token_ids=list(range(3, 3 + n))) for n in (2, 7, 4)]))
    items = [target_pb2.VerifyItem(session_id=r.session_id, position=r.position,
                                   draft_token_ids=[5] * k)
             for r, k in zip(opened.results, (0, 3, 1), strict=True)]
    reply = target.Verify(target_pb2.VerifyRequest(items=items))
    assert reply.forward_passes == 1 and reply.batched_sessions == 3
    assert [r.code for r in reply.results] == [0, 0, 0]
    target.CloseSession(target_pb2.CloseTargetSessionRequest(
        session_ids=[r.session_id for r in opened.results]))


def no_sessions_left(stack) -> bool:
    """Every session closed (draft sessions close in the background, so a stream may end a
    moment before its draft session is gone; the long wait only bounds a hang)."""
    return wait_until(lambda: stack.live_sessions() == (0, 0), timeout=30)


@pytest.fixture
def limited_stack(loop, lms):
    """A stack whose services get the given limits."""
    started = []

    def start(draft_cfg=None, target_cfg=None):
        started.append(start_stack(loop, lms["draft_perturbed"], lms["target"], draft_cfg,
                                   target_cfg))
        return started[-1]

    yield start
    for stack in started:
        stack.stop()


def test_past_the_session_limit_new_requests_fail_cleanly(limited_stack, loop):
    stack = limited_stack(target_cfg={"max_sessions": 4})
    running = [request(p, 3, 60) for p in PROMPTS[:4]]
    alone = [loop.run(generate_all(stack.addr, [r]))[0][0] for r in running]

    async def scenario():
        tasks = [asyncio.ensure_future(generate_all(stack.addr, [r])) for r in running]
        while stack.live_sessions()[1] < 4:  # all four hold their target sessions
            await asyncio.sleep(0.005)
        late = await generate_all(stack.addr, [request(PROMPTS[5], 3, 10)])
        return [(await t)[0] for t in tasks], late[0]

    results, late = loop.run(scenario())
    assert isinstance(late, grpc.aio.AioRpcError)
    assert late.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-sessions" in late.details() and "target service" in late.details()
    assert not [r for r in results if isinstance(r, Exception)], results
    assert [ids for ids, _ in results] == alone  # the running ones finished, unharmed
    assert no_sessions_left(stack)


def test_past_the_cache_budget_the_target_refuses_and_the_draft_falls_back(limited_stack, loop):
    per_token = 2 * 2 * 2 * 16 * 4  # layers * kv heads * head dim * float32, keys and values
    small = {"max_cache_mb": 100 * per_token / 2**20}
    # The target cannot take the session: the request fails cleanly.
    target_full = limited_stack(target_cfg=small)
    (err,) = loop.run(generate_all(target_full.addr, [request("def", 4, 150)]))
    assert isinstance(err, grpc.aio.AioRpcError)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-cache-mb" in err.details() and "target service" in err.details()
    (ok,) = loop.run(generate_all(target_full.addr, [request("def", 4, 20)]))
    assert len(ok[0]) == 20
    # The draft cannot: the request runs target-only, with exactly the target's output.
    draft_full = limited_stack(draft_cfg=small)
    (fallback,) = loop.run(generate_all(draft_full.addr, [request("def", 4, 150)]))
    (alone,) = loop.run(generate_all(draft_full.addr, [request("def", 0, 150)]))
    assert fallback[0] == alone[0]
    assert fallback[1].draft_fallback_reason == "resource_exhausted"
    assert fallback[1].draft_fallback_rounds > 0 and fallback[1].proposed_draft_tokens == 0
    for stack in (target_full, draft_full):
        assert no_sessions_left(stack)
