"""How long a draft open holds the other generations' rounds in lockstep, against a stand-in
draft service (a real gRPC server on loopback) whose calls take as long as the test says.

The rule: about what answered opens of that size took; while the draft's last call went
unanswered, one Propose budget at most; opens that timed out never lengthen it. (A slow
draft once re-opened behind holds inflated by its own timeouts, holding every round for
over a second with a 300 ms Propose budget.)"""

import asyncio

import pytest

from coordinator.upstream.budgets import LatencyBudget
from coordinator.upstream.clients import UpstreamError
from specdec.v1 import common_pb2, draft_pb2, draft_pb2_grpc
from stack import standin_draft

PROPOSE_BUDGET_S = 0.3  # --draft-timeout-ms 300


class StandInDraft(draft_pb2_grpc.DraftServiceServicer):
    """Answers OpenSession and Propose after `delay_s` (empty results)."""

    def __init__(self):
        self.delay_s = 0.0

    async def OpenSession(self, request, context):
        await asyncio.sleep(self.delay_s)
        return draft_pb2.OpenDraftSessionResponse(
            results=[common_pb2.OpenSessionResult(session_id=i.session_id)
                     for i in request.items], compute_time_us=1000)

    async def Propose(self, request, context):
        await asyncio.sleep(self.delay_s)
        return draft_pb2.ProposeResponse(batched_sessions=len(request.items))


def open_items(tokens: int) -> list:
    return [common_pb2.OpenSessionItem(session_id="s", prompt_token_ids=list(range(tokens)))]


def propose_request() -> draft_pb2.ProposeRequest:
    return draft_pb2.ProposeRequest(items=[draft_pb2.ProposeItem(session_id="s", num_tokens=4)])


def test_a_timed_out_call_counts_for_the_timeout_but_not_for_what_an_answer_takes():
    budget = LatencyBudget(None, floor_s=0.01, initial_s=10.0)
    budget.observe(0.05, size=10)
    timeout_before = budget.timeout(10)
    for _ in range(3):
        budget.observe(2.0, size=10, timed_out=True)
    assert budget.expected(10) == pytest.approx(0.05)
    assert budget.timeout(10) > timeout_before  # a slow service still gets longer timeouts


def test_an_open_holds_one_propose_budget_while_the_draft_goes_unanswered():
    async def main():
        draft = StandInDraft()
        items = open_items(40)
        async with standin_draft(draft, propose_timeout_s=PROPOSE_BUDGET_S) as client:
            await client.call("OpenSession", draft_pb2.OpenDraftSessionRequest(
                items=open_items(10)))
            healthy = client.opens.hold_s(items)
            expected = client.budget("OpenSession").expected(40)
            draft.delay_s = 30.0  # the draft hangs: every call times out
            with pytest.raises(UpstreamError, match="no answer within"):
                await client.call("Propose", propose_request())
            after_propose_timeout = client.opens.hold_s(items)
            with pytest.raises(UpstreamError, match="no answer within"):
                await client.call("OpenSession", draft_pb2.OpenDraftSessionRequest(items=items))
            after_open_timeout = client.opens.hold_s(items)
            draft.delay_s = 0.0  # it answers again
            await client.call("Propose", propose_request())
            recovered = client.opens.hold_s(items)
        return healthy, expected, after_propose_timeout, after_open_timeout, recovered, \
            client.budget("OpenSession").expected(40)

    healthy, expected, after_propose, after_open, recovered, expected_after = \
        asyncio.run(asyncio.wait_for(main(), 60))
    assert healthy == max(PROPOSE_BUDGET_S, 1.5 * expected)  # about what an open takes
    assert after_propose == after_open == PROPOSE_BUDGET_S
    # the open that timed out changed neither what an open is expected to take nor the hold
    assert expected_after == expected and recovered == healthy
