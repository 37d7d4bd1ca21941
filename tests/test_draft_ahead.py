"""Drafting ahead (--schedule pipelined --draft-ahead 1): the draft proposes the next round
while the target verifies this one. Greedy output stays token-identical to the target alone,
alone and under concurrency; sampled requests run the ordinary rounds."""

import pytest
from test_exactness import MAX_NEW, pairs, reference  # noqa: F401  (a fixture)

from coordinator import server as coordinator_server
from coordinator.client import generate as client_generate
from specdec.errors import InvalidArgument
from specdec.v1 import generator_pb2
from stack import coordinator_config, generate_all, start_stack
from tiny_models import PROMPTS

AHEAD = {"schedule": "pipelined", "draft_ahead": True}


@pytest.fixture(scope="module")
def ahead_stacks(loop, lms):
    started = {}

    def get(draft: str):
        if draft not in started:
            started[draft] = start_stack(loop, lms[draft], lms["target"], coord_cfg=AHEAD)
        return started[draft]

    yield get
    for stack in started.values():
        stack.stop()


def request(prompt: str, k: int, max_new: int = MAX_NEW, **fields):
    return generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new,
                                         num_speculative_tokens=k, **fields)


@pytest.mark.parametrize("draft", [  # the int4 draft adds ~1 min: `make test-all`
    "draft_identical", "draft_perturbed", "draft_unrelated",
    pytest.param("draft_perturbed_int4", marks=pytest.mark.slow)])
def test_drafting_ahead_equals_generate(ahead_stacks, reference, draft):  # noqa: F811
    stack = ahead_stacks(draft)
    used = discarded = rounds = 0
    for k, prompt in pairs(every=draft == "draft_perturbed"):
        ids, _, stats = client_generate(stack.addr, request(prompt, k), timeout_s=60)
        assert ids == reference[prompt], (draft, k, prompt)
        used += stats["ahead_used_blocks"]
        discarded += stats["ahead_discarded_blocks"]
        rounds += stats["rounds"]
    print(f"{draft}: {rounds} rounds, ahead blocks used {used}, discarded {discarded}")
    if draft == "draft_identical":  # the guess is the target's own token: always right
        assert used > 0.6 * rounds and discarded == 0
    elif draft == "draft_unrelated":
        assert used < discarded
    else:  # both paths ran: blocks kept, and blocks rolled back
        assert used > 0 and discarded > 0
    assert stack.sessions_left() == (0, 0)


def test_drafting_ahead_under_concurrency_equals_lone_runs(ahead_stacks, stacks, loop):
    """16 concurrent greedy requests (K 1 to 8, half adaptive) with blocks drafted ahead
    equal the same requests without (the ordinary stack), run alone."""
    ks = [1, 2, 3, 4, 6, 8, 1, 2, 3, 4, 5, 7, 8, 2, 4, 6]
    reqs = [request(PROMPTS[i], ks[i], 8 + 3 * i, adaptive_k=bool(i % 2)) for i in range(16)]
    plain = stacks("draft_perturbed")
    alone = [loop.run(generate_all(plain.addr, [r]))[0] for r in reqs]
    stack = ahead_stacks("draft_perturbed")
    together = loop.run(generate_all(stack.addr, reqs))
    for req, (ids_alone, _), (ids_together, _) in zip(reqs, alone, together, strict=True):
        assert ids_together == ids_alone, (req.prompt, req.num_speculative_tokens)
    assert sum(stats.ahead_used_blocks for _, stats in together) > 0
    assert stack.sessions_left() == (0, 0)


def test_sampled_requests_run_ordinary_rounds(ahead_stacks, stacks):
    """A seeded sampled request draws the same tokens with and without --draft-ahead (it
    runs the ordinary rounds there: a sampled rejection needs the rows of the block being
    verified) and never uses a block drafted ahead."""
    req = request(PROMPTS[3], 4, 40, temperature=0.9, seed=1234)
    ids_plain, _, _ = client_generate(stacks("draft_perturbed").addr, req, timeout_s=60)
    ids, _, stats = client_generate(ahead_stacks("draft_perturbed").addr, req, timeout_s=60)
    assert ids == ids_plain
    assert stats["ahead_used_blocks"] == stats["ahead_discarded_blocks"] == 0


def test_draft_ahead_needs_the_pipelined_schedule(loop):
    """With lockstep, the draft would only run after the verify: refused at start-up."""
    cfg = coordinator_config(1, 2, schedule="lockstep", draft_ahead=True)
    with pytest.raises(InvalidArgument, match="--schedule pipelined"):
        loop.run(coordinator_server.start(cfg))

