"""Greedy speculative decoding through the real services equals the target alone, exactly."""

import collections

import grpc
import pytest
import torch

from coordinator.client import generate as client_generate
from coordinator.config import parser
from specdec import fp16_weights
from specdec.v1 import generator_pb2, generator_pb2_grpc
from stack import draft_opens, gpu_like_costs, start_stack
from tiny_models import PROMPTS

MAX_NEW = 24
KS = [1, 2, 3, 4, 8]
SETS_ACCEPTANCE = {"draft_perturbed", "draft_unrelated"}  # run every (K, prompt) pair


def pairs(every: bool):
    """(K, prompt) pairs: all of them, or half, alternating, so that each K still meets half
    the prompts and each prompt half the Ks (options that change where proposals come from,
    not how the target checks them; halves the default suite's time for each)."""
    return [(k, prompt) for i, k in enumerate(KS) for j, prompt in enumerate(PROMPTS)
            if every or (i + j) % 2 == 0]


def greedy_outputs(lm) -> dict[str, list[int]]:
    """Token ids of lm's generate(do_sample=False) for every prompt."""
    out = {}
    for prompt in PROMPTS:
        ids = lm.tokenizer(prompt).input_ids
        with torch.inference_mode():
            gen = lm.model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW, do_sample=False,
                                    eos_token_id=lm.eos_token_ids, pad_token_id=lm.eos_token_ids[0])
        out[prompt] = gen[0, len(ids):].tolist()
    return out


@pytest.fixture(scope="module")
def reference(lms):
    """The target's own greedy output for every prompt."""
    return greedy_outputs(lms["target"])


def run(stack, prompt, k, adaptive=False):
    """Generate with exactly K proposals per round (or, adaptive, at most K)."""
    req = generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=MAX_NEW,
                                        num_speculative_tokens=k, adaptive_k=adaptive)
    return client_generate(stack.addr, req, timeout_s=60)


def test_one_message_per_round_carries_the_same_tokens_and_text(stacks, reference):
    """token_grouping ROUND: one message per round holding that round's tokens; the ids and
    the text (stop strings included) equal per-token streaming's and the target's own."""
    stack = stacks("draft_perturbed")
    for prompt in PROMPTS[:3]:
        req = generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=MAX_NEW,
                                            num_speculative_tokens=3, adaptive_k=False)
        ids, text, _ = client_generate(stack.addr, req, timeout_s=60)
        assert ids == reference[prompt]
        stop = text[len(text) // 2:len(text) // 2 + 2]
        for stops in ([], [stop]):
            del req.stop[:]
            req.stop.extend(stops)
            req.token_grouping = generator_pb2.TOKEN_GROUPING_TOKEN
            want_ids, want_text, _ = client_generate(stack.addr, req, timeout_s=60)
            req.token_grouping = generator_pb2.TOKEN_GROUPING_ROUND
            with grpc.insecure_channel(stack.addr) as channel:
                *rounds, last = generator_pb2_grpc.GeneratorStub(channel).Generate(req,
                                                                                   timeout=60)
            assert all(m.HasField("tokens") and m.tokens.ids for m in rounds)
            assert len(rounds) == last.stats.rounds
            assert [i for m in rounds for i in m.tokens.ids] == want_ids
            assert "".join(m.tokens.text for m in rounds) == want_text
            assert max(len(m.tokens.ids) for m in rounds) > 1, prompt  # proposals accepted
        assert stop not in want_text and len(want_text) < len(text)


def test_target_only_k0_equals_generate(stacks, reference):
    stack = stacks("draft_unrelated")
    for prompt in PROMPTS:
        ids, _, stats = run(stack, prompt, 0)
        assert ids == reference[prompt], prompt
        assert stats["rounds"] == len(ids) and stats["proposed_draft_tokens"] == 0


@pytest.mark.parametrize("draft", ["draft_unrelated", "draft_identical", "draft_perturbed",
                                   "draft_perturbed_int8", "draft_perturbed_int4",
                                   "draft_perturbed_top_half"])
def test_speculative_equals_generate(stacks, reference, draft):
    stack = stacks(draft)
    proposed = accepted = 0
    for k, prompt in pairs(every=draft in SETS_ACCEPTANCE):
        ids, text, stats = run(stack, prompt, k)
        assert ids == reference[prompt], (draft, k, prompt)
        proposed += stats["proposed_draft_tokens"]
        accepted += stats["accepted_draft_tokens"]
        if draft == "draft_identical":
            assert stats["acceptance_rate"] == 1.0, (k, prompt, stats)
    rate = accepted / proposed
    print(f"{draft}: acceptance {rate:.3f} over {proposed} proposals")
    if draft == "draft_unrelated":
        assert rate < 0.5
    elif draft == "draft_perturbed":
        assert 0.3 < rate < 0.95
    assert stack.sessions_left() == (0, 0)


@pytest.mark.parametrize("draft", ["draft_perturbed", "draft_perturbed_int4"])
def test_adaptive_k_equals_generate(stacks, reference, draft):
    """Adaptive K (adaptive_k=true): each round proposes up to K tokens, as many as
    the costs and the session's acceptance make worth it; output token-identical."""
    stack = stacks(draft)
    proposed = collections.Counter()
    with gpu_like_costs(stack.coordinator):
        for cap in (4, 8):
            for prompt in PROMPTS:
                ids, _, stats = run(stack, prompt, cap, adaptive=True)
                assert ids == reference[prompt], (draft, cap, prompt)
                proposed[stats["proposed_draft_tokens"] * 10 // stats["rounds"]] += 1
    print(f"{draft}: requests by tenths of mean K {sorted(proposed.items())}")
    assert len(proposed) >= 5  # K really varied between requests (and rounds)
    assert stack.sessions_left() == (0, 0)


@pytest.mark.skipif(not fp16_weights.available(), reason="no fbgemm in this torch (non-x86)")
def test_a_target_on_fp16_weights_speculates_to_its_own_greedy_output(loop, lms):
    """A target on fp16 weights (--quantization fp16, or bf16 on a CPU without bf16 kernels):
    fixed and adaptive K give exactly what that target's own generate() gives."""
    target = lms["target_fp16"]
    want = greedy_outputs(target)
    stack = start_stack(loop, lms["draft_perturbed_int4"], target)
    try:
        accepted = 0
        for k, prompt in pairs(every=False):
            ids, _, stats = run(stack, prompt, k)
            assert ids == want[prompt], (k, prompt)
            accepted += stats["accepted_draft_tokens"]
        with gpu_like_costs(stack.coordinator):
            for prompt in PROMPTS:
                ids, _, _ = run(stack, prompt, 8, adaptive=True)
                assert ids == want[prompt], ("adaptive", prompt)
        assert accepted > 0
    finally:
        stack.stop()


def test_by_default_a_request_without_k_is_adaptive_up_to_default_k(loop, lms, reference):
    """With the coordinator's default flags (--adaptive-k 1, --default-k 8), a request that
    sets neither K nor adaptive_k has each round's K chosen, up to 8; adaptive_k=false keeps
    K fixed at 8. The output is the target's either way."""
    flags = parser().parse_args(["--draft", "127.0.0.1:1", "--target", "127.0.0.1:1"])
    assert (flags.adaptive_k, flags.default_k) == (1, 8)
    stack = start_stack(loop, lms["draft_perturbed"], lms["target"],
                        coord_cfg={"adaptive_k": True, "default_k": flags.default_k})
    chosen = stack.coordinator.core.adaptive.chosen  # rounds whose K the controller chose
    prompt = PROMPTS[1]
    try:
        with gpu_like_costs(stack.coordinator):
            for adaptive_k in (None, False):
                before = sum(chosen.values())
                req = generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=MAX_NEW)
                if adaptive_k is not None:
                    req.adaptive_k = adaptive_k
                ids, _, stats = client_generate(stack.addr, req, timeout_s=60)
                assert ids == reference[prompt], adaptive_k
                assert (sum(chosen.values()) - before == stats["rounds"]) == (adaptive_k is None)
                if adaptive_k is False:  # its rounds proposed 8 (fewer only near the end)
                    assert len(stats["proposed_at_position"]) == 8
    finally:
        stack.stop()


def test_an_adaptive_session_opens_its_draft_only_where_speculation_pays(stacks, reference):
    """Where the cost model already picks K = 0 (here a draft step dearer than 50 verify
    passes), an adaptive session never opens a draft session: no draft prefill of the prompt
    for nothing. Where speculation pays, it opens one as before. The output is the target's
    either way."""
    stack = stacks("draft_perturbed")
    prompt = PROMPTS[0]
    for step_s, opens in ((1.0, 0), (0.001, 1)):
        with gpu_like_costs(stack.coordinator, draft_step_s=step_s), \
                draft_opens(stack) as opened:
            ids, _, stats = run(stack, prompt, 4, adaptive=True)
        assert ids == reference[prompt], step_s
        assert len(opened) == opens, step_s
        assert (stats["proposed_draft_tokens"] > 0) == (opens > 0), step_s
    assert stack.sessions_left() == (0, 0)


@pytest.mark.parametrize("proposer", ["ngram", "ngram+model"])
def test_prompt_lookup_equals_generate(stacks, reference, proposer):
    """--proposer ngram / ngram+model: prompt-lookup proposals, alone or before the model's;
    output token-identical for every K (half the (K, prompt) pairs)."""
    stack = stacks("draft_perturbed", proposer)
    engine = stack.draft[1].engine
    for k, prompt in pairs(every=False):
        ids, _, _ = run(stack, prompt, k)
        assert ids == reference[prompt], (proposer, k, prompt)
    print(f"{proposer}: proposed {engine.proposed}")
    assert engine.proposed["ngram"] > 0  # lookups did propose
    assert (engine.proposed["model"] == 0) == (proposer == "ngram")
    assert stack.sessions_left() == (0, 0)


def test_early_stop_by_draft_confidence_keeps_greedy_output(stacks, reference):
    """--min-confidence: rounds propose fewer tokens when the draft is unsure; output is
    unchanged."""
    stack = stacks("draft_perturbed")
    engine = stack.draft[1].engine
    proposed = {}
    try:
        for threshold in (0.0, 0.5):
            engine.min_confidence = threshold
            proposed[threshold] = 0
            for prompt in PROMPTS:
                ids, _, stats = run(stack, prompt, 8)
                assert ids == reference[prompt], (threshold, prompt)
                proposed[threshold] += stats["proposed_draft_tokens"]
    finally:
        engine.min_confidence = 0.0
    assert proposed[0.5] < proposed[0.0], proposed  # rounds did stop early
