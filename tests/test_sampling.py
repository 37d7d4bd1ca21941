"""Lossless sampling through the real services on loopback: the emitted tokens have the
target's exact distribution (chi-square against its logits), and seeds reproduce outputs."""


import asyncio
import collections
import json
import random
import threading
import time

import pytest
import torch

from bench.delayproxy import DelayProxy
from chisq import chi_square_p_value
from coordinator import server as coordinator_server
from specdec.draft_engine import ProposerConfig
from specdec.models import load_model
from specdec.sampling import SamplingParams, warp
from specdec.v1 import generator_pb2
from stack import coordinator_config, generate_all, gpu_like_costs, start_stack
from tiny_models import PROMPTS, make_small_vocab_dirs

PROMPT = "ab"
SAMPLES = 10_000  # per (setting, K) in make test-all; the default suite draws half of it
SETTINGS = {"t1.0": SamplingParams(1.0), "t0.7_top_p0.9": SamplingParams(0.7, top_p=0.9)}


@pytest.fixture(scope="module")
def small_dirs(tmp_path_factory):
    return make_small_vocab_dirs(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def small(loop, small_dirs, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    lms = {name: load_model(str(path), "float32", "cpu", cache)
           for name, path in small_dirs.items()}
    limits = {"max_sessions": 128}
    stack = start_stack(loop, lms["small_draft"], lms["small_target"], limits, limits)
    yield lms, stack
    stack.stop()


def exact_joint(lm, prompt: str, params: SamplingParams) -> torch.Tensor:
    """P(first token = a, second = b) [V, V] of the target sampling alone."""
    ids = lm.tokenizer(prompt).input_ids
    vocab = lm.vocab_size
    with torch.inference_mode():
        first = warp(lm.model(torch.tensor([ids])).logits[0, -1:], params)[0]        # [V]
        seconds = torch.tensor([ids + [a] for a in range(vocab)])                      # [V, L+1]
        second = warp(lm.model(seconds).logits[:, -1], params)                         # [V, V]
    return first[:, None] * second


def request(params: SamplingParams, k: int, seed: int, max_new_tokens: int,
            prompt: str = PROMPT):
    req = generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=max_new_tokens,
                                        num_speculative_tokens=k, temperature=params.temperature,
                                        top_k=params.top_k, seed=seed)
    if params.top_p < 1:
        req.top_p = params.top_p
    return req


async def draw(addr: str, requests) -> list[tuple[int, ...]]:
    """Token ids of every request, 96 at a time."""
    results = await generate_all(addr, requests, concurrency=96)
    failed = [r for r in results if isinstance(r, Exception)]
    assert not failed, failed[:1]
    return [tuple(ids) for ids, _ in results]


def joint_counts(outputs, vocab: int) -> torch.Tensor:
    counts = torch.zeros(vocab, vocab)
    for out in outputs:
        counts[out[0], out[1]] += 1
    return counts


@pytest.mark.parametrize("setting,samples", [  # t0.7_top_p0.9 warps more
    ("t0.7_top_p0.9", SAMPLES // 2),  # ~2 min on an AVX2-only host; 4 min more each below
    pytest.param("t0.7_top_p0.9", SAMPLES, marks=pytest.mark.slow),
    pytest.param("t1.0", SAMPLES, marks=pytest.mark.slow)])
def test_first_two_tokens_have_the_targets_exact_distribution(small, loop, setting, samples):
    """K=1: the second token is the bonus token or the next round's; K=3: the first two
    tokens are accepted or recovered proposals (and 4 recovery candidates). Each K alone and
    both pooled have the target's joint law."""
    lms, stack = small
    params = SETTINGS[setting]
    joint = exact_joint(lms["small_target"], PROMPT, params)
    vocab = joint.shape[0]
    engine = stack.target[1].engine
    pooled = torch.zeros(vocab, vocab)
    try:
        for k, candidates in ((1, 64), (3, 4)):
            engine.recovery_candidates = candidates
            reqs = [request(params, k, seed, max_new_tokens=k + 1) for seed in range(samples)]
            counts = joint_counts(loop.run(draw(stack.addr, reqs), timeout=600), vocab)
            pooled += counts
            p_value = chi_square_p_value(counts, joint)
            print(f"{setting} K={k}: chi-square p = {p_value:.4f} over {samples} samples")
            assert p_value > 0.01, f"{setting} K={k}: p = {p_value}"
    finally:
        engine.recovery_candidates = 64
    assert chi_square_p_value(pooled, joint) > 0.01


@pytest.mark.slow  # ~30-40 s each: `make test-all`
def test_adaptive_k_keeps_the_distribution(small, loop):
    """Adaptive K with a seed (adaptive_k=true): each round's K is chosen from the rounds
    before it, never from the round's own draws, so the law is unchanged."""
    lms, stack = small
    params = SETTINGS["t0.7_top_p0.9"]
    joint = exact_joint(lms["small_target"], PROMPT, params)
    reqs = [request(params, 3, seed, max_new_tokens=4) for seed in range(SAMPLES)]
    for r in reqs:
        r.adaptive_k = True
    chosen = stack.coordinator.core.adaptive.chosen
    before = collections.Counter(chosen)
    with gpu_like_costs(stack.coordinator, draft_step_s=0.006):  # K=1, 2 or 3 within a few percent
        results = loop.run(generate_all(stack.addr, reqs, concurrency=96), timeout=600)
    rounds = {k: n for k, n in (chosen - before).items() if n}
    counts = joint_counts([tuple(ids) for ids, _ in results], joint.shape[0])
    p_value = chi_square_p_value(counts, joint)
    print(f"adaptive K (up to 3): rounds by K chosen {sorted(rounds.items())}; "
          f"chi-square p = {p_value:.4f}")
    assert len([k for k in rounds if k > 0]) >= 2  # K varied
    assert p_value > 0.01


@pytest.mark.slow  # ~30-40 s each: `make test-all`
def test_restricted_draft_head_keeps_the_distribution(small, small_dirs, loop, tmp_path):
    """--draft-vocab: the draft proposes among 8 of the 16 tokens (q = 0 on the others);
    the target draws the rest from its residual. The first two tokens keep its law."""
    lms, _ = small
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(list(range(0, 16, 2))))  # every other token
    draft = load_model(str(small_dirs["small_draft"]), "float32", "cpu", str(tmp_path),
                       head_vocab=str(ids))
    limits = {"max_sessions": 128}
    stack = start_stack(loop, draft, lms["small_target"], limits, limits)
    params = SETTINGS["t1.0"]
    joint = exact_joint(lms["small_target"], PROMPT, params)
    try:
        reqs = [request(params, 3, seed, max_new_tokens=4) for seed in range(SAMPLES)]
        results = loop.run(generate_all(stack.addr, reqs, concurrency=96), timeout=600)
    finally:
        stack.stop()
    outputs = [tuple(ids) for ids, _ in results]
    accepted = sum(stats.accepted_draft_tokens for _, stats in results)
    counts = joint_counts(outputs, joint.shape[0])
    p_value = chi_square_p_value(counts, joint)
    odd = sum(out[0] % 2 for out in outputs)  # first tokens the draft could never propose
    print(f"restricted head (8 of 16 tokens, K=3): {accepted} proposals accepted, {odd} first "
          f"tokens outside the head; chi-square p = {p_value:.4f}")
    assert accepted > 0 and odd > 0
    assert p_value > 0.01


@pytest.mark.slow  # ~30-40 s each: `make test-all`
def test_early_stop_by_draft_confidence_keeps_the_distribution(small, loop):
    """--min-confidence ends a round's proposals when the draft is unsure. The decision is
    made from q before drawing, so every proposal kept is still a draw from q."""
    lms, stack = small
    params = SETTINGS["t1.0"]
    joint = exact_joint(lms["small_target"], PROMPT, params)
    engine = stack.draft[1].engine
    engine.min_confidence, before = 0.3, engine.early_stops
    try:
        reqs = [request(params, 3, seed, max_new_tokens=4) for seed in range(SAMPLES)]
        results = loop.run(generate_all(stack.addr, reqs, concurrency=96), timeout=600)
    finally:
        engine.min_confidence = 0.0
    stops = engine.early_stops - before
    rounds = sum(stats.rounds - stats.draft_fallback_rounds for _, stats in results)
    counts = joint_counts([tuple(ids) for ids, _ in results], joint.shape[0])
    p_value = chi_square_p_value(counts, joint)
    print(f"early stop (min confidence 0.3, K=3): {stops} of {rounds} rounds ended early; "
          f"chi-square p = {p_value:.4f}")
    assert 0 < stops < rounds  # the stop really happened, and not always
    assert p_value > 0.01


@pytest.mark.slow  # ~30-40 s each: `make test-all`
def test_prompt_lookup_keeps_the_distribution(small, loop):
    """--proposer ngram: on "abab" the lookup proposes the tokens that followed the earlier
    "ab" with q a point mass on them; the ratio rule accepts each with probability p and
    otherwise draws from p without it. The first two tokens keep the target's law."""
    lms, stack = small
    params, prompt = SETTINGS["t1.0"], "abab"
    joint = exact_joint(lms["small_target"], prompt, params)
    engine = stack.draft[1].engine
    before, engine.proposer = engine.proposer, ProposerConfig("ngram")
    looked_up = engine.proposed["ngram"]
    try:
        reqs = [request(params, 2, seed, 3, prompt) for seed in range(SAMPLES)]
        results = loop.run(generate_all(stack.addr, reqs, concurrency=96), timeout=600)
    finally:
        engine.proposer = before
    accepted = sum(stats.accepted_draft_tokens for _, stats in results)
    counts = joint_counts([tuple(ids) for ids, _ in results], joint.shape[0])
    p_value = chi_square_p_value(counts, joint)
    looked_up = engine.proposed["ngram"] - looked_up
    print(f"prompt lookup (K=2): {looked_up} tokens proposed, {accepted} accepted; "
          f"chi-square p = {p_value:.4f}")
    assert looked_up >= SAMPLES and 0 < accepted < looked_up
    assert p_value > 0.01


@pytest.mark.slow  # 10,000 requests through cut links: > 5 min on an AVX2-only host
@pytest.mark.timeout(900)
def test_the_distribution_holds_while_services_fail(small, loop):
    """The same check through a coordinator whose links to the draft and the target are cut
    at random, and whose target loses every session now and then (as in a restart), while
    10,000 requests run: fallback rounds and re-opened sessions (fresh seeds) must not bend
    the distribution."""
    lms, stack = small
    params = SETTINGS["t1.0"]
    joint = exact_joint(lms["small_target"], PROMPT, params)
    proxies = {role: DelayProxy(getattr(stack, role)[0].port) for role in ("draft", "target")}
    coordinator = loop.run(coordinator_server.start(coordinator_config(
        proxies["draft"].port, proxies["target"].port, max_speculative_tokens=8)))
    stop = threading.Event()
    rng = random.Random(7)

    target_engine, target_worker = stack.target[1].engine, stack.target[1].worker

    def forget_all_sessions():  # what a target restart looks like to the coordinator
        for sid in [s for s in list(target_engine.sessions._sessions)]:
            target_engine.sessions.pop(sid)

    def cut_at_random():
        while not stop.wait(rng.uniform(0.01, 0.05)):
            if rng.random() < 0.1:
                asyncio.run_coroutine_threadsafe(
                    target_worker.run(forget_all_sessions), loop.loop).result(10)
            else:
                proxies["draft" if rng.random() < 0.8 else "target"].cut()

    cutter = threading.Thread(target=cut_at_random, daemon=True)
    cutter.start()
    try:
        reqs = [request(params, 3, seed, max_new_tokens=4) for seed in range(SAMPLES)]
        results = loop.run(generate_all(f"127.0.0.1:{coordinator.port}", reqs, concurrency=96),
                           timeout=600)
    finally:
        stop.set()
        cutter.join()
        # closes that met a cut are retried in the background: nothing may be left behind
        deadline = time.monotonic() + 20
        while stack.live_sessions() != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        leaked = stack.live_sessions()
        loop.run(coordinator.stop(0))
        for proxy in proxies.values():
            proxy.close()
    assert leaked == (0, 0), list(stack.draft[1].engine.sessions._sessions)
    done = [r for r in results if not isinstance(r, Exception)]
    assert len(done) > 0.95 * SAMPLES, [r for r in results if isinstance(r, Exception)][:1]
    fallbacks = sum(stats.draft_fallback_rounds for _, stats in done)
    reopens = sum(stats.target_reopens for _, stats in done)
    counts = joint_counts([tuple(ids) for ids, _ in done], joint.shape[0])
    p_value = chi_square_p_value(counts, joint)
    print(f"under faults: chi-square p = {p_value:.4f} over {len(done)} samples, "
          f"{fallbacks} fallback rounds, {reopens} target sessions re-opened")
    assert fallbacks > 100 and reopens > 10
    assert p_value > 0.01


def test_the_same_check_fails_for_a_wrong_rule(small, loop):
    """Accepting every proposal emits the draft's distribution: the test must notice."""
    lms, stack = small
    params = SETTINGS["t1.0"]
    joint = exact_joint(lms["small_target"], PROMPT, params)
    engine = stack.target[1].engine
    right_rule = engine.accept_rule
    engine.accept_rule = lambda target_p, draft_q, uniforms: len(target_p)
    try:
        # 2,000 samples: p ~ 1e-49 at 5,000, far below 0.01 at this size too
        reqs = [request(params, 1, seed, max_new_tokens=2) for seed in range(SAMPLES // 5)]
        results = loop.run(generate_all(stack.addr, reqs, concurrency=96), timeout=600)
    finally:
        engine.accept_rule = right_rule
    # every request really speculated (a fallback round would hide the wrong rule)
    assert all(stats.proposed_draft_tokens == 1 for _, stats in results)
    counts = joint_counts([tuple(ids) for ids, _ in results], joint.shape[0])
    p_value = chi_square_p_value(counts, joint)
    print(f"always-accept: chi-square p = {p_value:.2e}")
    assert p_value < 0.01


def sampled(prompt: str, seed: int | None, k: int = 3) -> generator_pb2.GenerateRequest:
    req = generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=40,
                                        num_speculative_tokens=k, temperature=0.8, top_k=50,
                                        top_p=0.95)
    if seed is not None:
        req.seed = seed
    return req


def test_same_seed_same_tokens_across_runs_and_under_load(stacks, loop, lms):
    stack = stacks("draft_perturbed")
    mine = sampled("Once upon a time", seed=1234)
    (first_ids, first_stats), = loop.run(generate_all(stack.addr, [mine]))
    assert first_stats.seed == 1234 and len(first_ids) == 40
    # under concurrent load (other seeds, other K, greedy too), in one batch with them
    noise = [sampled(p, seed=i, k=i % 4) for i, p in enumerate(PROMPTS[:8])]
    loaded = loop.run(generate_all(stack.addr, [*noise, mine, sampled("x", None)]))
    assert loaded[len(noise)][0] == first_ids
    # on a second, freshly started pair of services
    fresh = start_stack(loop, lms["draft_perturbed"], lms["target"])
    try:
        (again, _), = loop.run(generate_all(fresh.addr, [mine]))
    finally:
        fresh.stop()
    assert again == first_ids
    # K does not change a seeded sample's distribution, but it does change the draws; a
    # different seed gives different tokens, and no seed gives a fresh random one each time
    (other, _), = loop.run(generate_all(stack.addr, [sampled("Once upon a time", seed=99)]))
    unseeded = loop.run(generate_all(stack.addr, [sampled("Once upon a time", None)] * 2))
    assert other != first_ids
    assert unseeded[0][0] != unseeded[1][0] and unseeded[0][1].seed != unseeded[1][1].seed
