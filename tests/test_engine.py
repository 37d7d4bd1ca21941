"""Engines directly (no transport): caches, roll-back, positions and retries."""

import numpy as np
import pytest
import torch

from specdec.draft_engine import DraftEngine, ProposeItem
from specdec.engine import OpenItem
from specdec.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
)
from specdec.sampling import SamplingParams
from specdec.target_engine import TargetEngine, VerifyItem


@pytest.fixture
def target(lms):
    return TargetEngine(lms["target"], max_sessions=4, session_ttl_s=60, max_proposal_tokens=8,
                        max_batch_items=4)


@pytest.fixture
def draft(lms):
    return DraftEngine(lms["draft_perturbed"], max_sessions=4, session_ttl_s=60,
                       max_proposal_tokens=8)


PROMPT = [5, 17, 42, 99, 7, 64, 3]


def propose1(draft, session_id, position, truncate_to, append, k):
    """One-item Propose: (token ids, position, draft probs), raising the item's error."""
    (o,), _ = draft.propose([ProposeItem(session_id, position, truncate_to, append, k)])
    if o.error is not None:
        raise o.error
    return list(o.token_ids), o.position, list(o.draft_probs)


def test_truncate_then_logits_equal_fresh_prefill(target):
    target.open("a", PROMPT)
    # grow the session through a few verify rounds with arbitrary proposals
    position = len(PROMPT)
    for drafts in ([1, 2, 3], [4], [], [8, 9, 10, 11]):
        (outcome,), *_ = target.verify([VerifyItem("a", position, drafts)])
        position = outcome.position
    tokens = list(target.sessions.get("a").tokens)
    for keep in (position - 1, len(PROMPT) + 2, len(PROMPT), 1):
        assert target.truncate("a", len(target.sessions.get("a").tokens), keep) == keep
        target.open(f"fresh{keep}", tokens[:keep])
        torch.testing.assert_close(target.logits("a"), target.logits(f"fresh{keep}"),
                                   rtol=1e-4, atol=1e-4)
        target.close(f"fresh{keep}")


def test_draft_truncate_then_propose_equals_fresh_session(draft):
    draft.open("a", PROMPT)
    proposals, position, _ = propose1(draft, "a", len(PROMPT), None, [], 6)
    assert position == len(PROMPT) + 6
    draft.truncate("a", position, len(PROMPT) + 2)
    draft.open("b", PROMPT + proposals[:2])
    assert propose1(draft, "a", len(PROMPT) + 2, None, [], 4) == \
        propose1(draft, "b", len(PROMPT) + 2, None, [], 4)


def test_propose_rolls_back_and_appends_like_a_fresh_session(draft):
    draft.open("a", PROMPT)
    proposals, position, _ = propose1(draft, "a", len(PROMPT), None, [], 5)
    got = propose1(draft, "a", position, len(PROMPT) + 2, [33], 3)
    draft.open("b", PROMPT + proposals[:2] + [33])
    assert got == propose1(draft, "b", len(PROMPT) + 3, None, [], 3)


def test_retry_returns_same_answer_without_applying_twice(draft, target):
    draft.open("a", PROMPT)
    first = propose1(draft, "a", len(PROMPT), None, [], 3)
    assert propose1(draft, "a", len(PROMPT), None, [], 3) == first
    assert len(draft.sessions.get("a").tokens) == len(PROMPT) + 3

    assert draft.truncate("a", len(PROMPT) + 3, len(PROMPT) + 1) == len(PROMPT) + 1
    assert draft.truncate("a", len(PROMPT) + 3, len(PROMPT) + 1) == len(PROMPT) + 1  # retry
    assert len(draft.sessions.get("a").tokens) == len(PROMPT) + 1

    target.open("t", PROMPT)
    item = VerifyItem("t", len(PROMPT), [1, 2])
    (first_outcome,), passes, _ = target.verify([item])
    (again,), passes_again, _ = target.verify([item])
    assert again == first_outcome and passes == 1 and passes_again == 0
    assert len(target.sessions.get("t").tokens) == first_outcome.position


def test_stale_position_is_rejected(draft, target):
    draft.open("a", PROMPT)
    with pytest.raises(FailedPrecondition, match="expects position 3"):
        propose1(draft, "a", 3, None, [], 2)
    target.open("t", PROMPT)
    (outcome,), *_ = target.verify([VerifyItem("t", len(PROMPT) + 1, [1])])
    assert isinstance(outcome.error, FailedPrecondition)
    assert target.sessions.get("t").tokens == PROMPT  # unchanged


def test_bad_input(draft, target):
    with pytest.raises(InvalidArgument, match="empty"):
        draft.open("x", [])
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        draft.open("x", [1, 10_000])
    with pytest.raises(OutOfRange, match="context"):
        draft.open("x", [1] * 1000)
    draft.open("a", PROMPT)
    with pytest.raises(AlreadyExists):
        draft.open("a", [1, 2])
    assert draft.open("a", PROMPT) == ("a", len(PROMPT))  # a retried open is a no-op
    with pytest.raises(InvalidArgument, match="num_tokens"):
        propose1(draft, "a", len(PROMPT), None, [], 9)
    with pytest.raises(NotFound):
        propose1(draft, "nope", 1, None, [], 1)
    draft.close("a")
    with pytest.raises(NotFound):
        draft.close("a")
    with pytest.raises(InvalidArgument, match="at least one item"):
        target.verify([])


def test_session_limit_and_expiry(draft):
    for i in range(4):
        draft.open(f"s{i}", PROMPT)
    with pytest.raises(ResourceExhausted, match="--max-sessions"):
        draft.open("s5", PROMPT)
    draft.sessions.ttl_s = 0.0
    assert sorted(draft.expire()) == [f"s{i}" for i in range(4)]
    draft.open("s5", PROMPT)


def test_one_failing_verify_item_does_not_affect_others(target):
    target.open("good", PROMPT)
    outcomes, passes, batched = target.verify([VerifyItem("missing", 3, []),
                                      VerifyItem("good", len(PROMPT), [1])])
    assert isinstance(outcomes[0].error, NotFound)
    assert outcomes[1].error is None and outcomes[1].position >= len(PROMPT) + 1
    assert passes == 1 and batched == 1


def test_resume_rejected_draws_the_recovered_token_without_a_new_accept_test(target):
    """A session re-opened on the accepted prefix continues a round whose proposal was
    already rejected: no accept test, straight to the recovered-token query."""
    sampling = SamplingParams(1.0, seed=3)
    sid, pos = target.open("", [5, 6, 7], sampling)
    (out,), passes, _ = target.verify([VerifyItem(sid, pos, [9], [0.5], resume_rejected=True)])
    assert out.error is None and passes == 1
    assert out.num_accepted == 0 and out.position == pos and out.query is not None
    assert out.query.index == 0 and len(out.query.token_ids) > 0
    answer = np.zeros(len(out.query.token_ids), dtype="<f4").tobytes()  # q = 0: p's draw
    (done,), _, _ = target.verify([VerifyItem(sid, pos, [], [], answer)])
    assert done.error is None and done.position == pos + 1 and done.query is None
    greedy_sid, gpos = target.open("", [5, 6, 7])
    (bad,), _, _ = target.verify([VerifyItem(greedy_sid, gpos, [9], [], resume_rejected=True)])
    assert isinstance(bad.error, InvalidArgument) and "resume_rejected" in str(bad.error)


def test_a_batched_pass_over_uneven_sessions_equals_each_alone(lms):
    """Sessions with different cached and pending lengths in one padded pass (a batched
    prefill, then a batched pass where each wants its own number of rows): every session's
    logits equal its own pass alone, so only the rows asked for need the output head."""
    prompts = {"a": [5, 17, 42], "b": [9, 8, 7, 6, 5, 4, 3, 2, 1], "c": [64, 3, 99, 7, 1, 2]}
    pending = {"a": [11, 12, 13, 14, 15], "b": [21], "c": [31, 32, 33]}
    wanted = {"a": 2, "b": 1, "c": 3}
    batched = TargetEngine(lms["target"], max_sessions=4, session_ttl_s=60,
                           max_proposal_tokens=8)
    alone = TargetEngine(lms["target"], max_sessions=4, session_ttl_s=60,
                         max_proposal_tokens=8)
    batched.open_many([OpenItem(sid, p) for sid, p in prompts.items()])
    sessions = [batched.sessions.get(sid) for sid in prompts]
    for s in sessions:
        s.tokens.extend(pending[s.id])
    together = batched._forward(sessions, [wanted[s.id] for s in sessions])
    for s, rows in zip(sessions, together, strict=True):
        alone.open(s.id, prompts[s.id])
        own = alone.sessions.get(s.id)
        own.tokens.extend(pending[s.id])
        expected = alone._next_logits(own, wanted[s.id])
        assert rows.shape == expected.shape == (wanted[s.id], lms["target"].vocab_size)
        torch.testing.assert_close(rows, expected, rtol=1e-4, atol=1e-4)
