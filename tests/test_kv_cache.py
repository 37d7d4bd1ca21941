"""The engines' KV cache pool (specdec.kv_cache): slots, growth, budget, no per-pass copies."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from specdec.engine import OpenItem
from specdec.errors import ResourceExhausted
from specdec.models import LoadedModel
from specdec.target_engine import TargetEngine, VerifyItem
from tiny_models import build_model, tiny_config

PROMPT = [5, 17, 42, 99, 7, 64, 3]


def loaded(config) -> LoadedModel:
    return LoadedModel(name="t", model=build_model(config, 0), tokenizer=None,
                       dtype=torch.float32, device=torch.device("cpu"),
                       vocab_size=config.vocab_size,
                       max_context_length=config.max_position_embeddings, eos_token_ids=[],
                       tokenizer_fingerprint="")


def allocated_bytes(fn) -> int:
    """Bytes allocated on the CPU while fn runs (every allocation, freed or not)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(ev.self_cpu_memory_usage for ev in prof.events()
               if ev.self_cpu_memory_usage > 0)


def test_a_batched_verify_copies_no_caches():
    """8 sessions of 400 tokens verify 4 proposals each: the pass allocates less than 0.4x
    the batch's KV cache. The engine before slots copied that cache ~4x per pass (into a
    left-padded batch, by update, by the model's cat, and back out: 4.15x measured on this
    model), so this is <= 1/10 of it."""
    config = tiny_config(320, 0, hidden_size=64, intermediate_size=64, head_dim=128,
                         num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=1024)
    engine = TargetEngine(loaded(config), 8, 60, 8, max_batch_items=8)
    gen = torch.Generator().manual_seed(0)
    for i in range(8):
        engine.open(f"s{i}", torch.randint(0, 320, (400,), generator=gen).tolist())
    items = [VerifyItem(f"s{i}", 400, [1, 2, 3, 4]) for i in range(8)]
    batch_kv = 8 * 400 * engine.kv_bytes_per_token
    used = allocated_bytes(lambda: engine.verify(items))
    assert used < 0.4 * batch_kv, (used, batch_kv)
    assert all(len(engine.sessions.get(f"s{i}").tokens) > 400 for i in range(8))


def test_the_pool_grows_packs_and_frees_slots(lms):
    engine = TargetEngine(lms["target"], max_sessions=4, session_ttl_s=60,
                          max_proposal_tokens=8)
    pool = engine.pool
    for sid in "abc":
        engine.open(sid, PROMPT)
    assert pool.slots >= 3 and pool.capacity >= len(PROMPT)
    indices = {s.index for s in pool.live}
    assert indices == {0, 1, 2}
    engine.close("a")
    assert len(pool.live) == 2
    engine.open("d", PROMPT)  # takes the freed slot
    assert {s.index for s in pool.live} == {0, 1, 2}
    reference = engine.logits("b")
    engine.sessions.get("b").tokens.extend([1] * 40)  # longer than the slots: the pool grows
    engine.logits("b")
    assert pool.capacity >= len(PROMPT) + 40
    engine.truncate("b", len(PROMPT) + 40, len(PROMPT))
    torch.testing.assert_close(engine.logits("b"), reference, rtol=1e-4, atol=1e-4)
    engine.sessions.ttl_s = 0.0
    engine.expire()
    assert pool.live == []


def test_truncate_then_verify_with_proposals_feeds_every_row(lms):
    """With nothing pending (just truncated), a verify of K proposals re-feeds the last
    cached token so all K+1 rows come out, as on a session that never rolled back."""
    rolled = TargetEngine(lms["target"], 4, 60, 8)
    fresh = TargetEngine(lms["target"], 4, 60, 8)
    rolled.open("a", PROMPT)
    (out,), *_ = rolled.verify([VerifyItem("a", len(PROMPT), [1, 2])])
    assert rolled.truncate("a", out.position, len(PROMPT)) == len(PROMPT)
    fresh.open("a", PROMPT)
    drafts = [9, 8, 7]
    (got,), *_ = rolled.verify([VerifyItem("a", len(PROMPT), drafts)])
    (want,), *_ = fresh.verify([VerifyItem("a", len(PROMPT), drafts)])
    assert got.error is None and got == want


def test_the_budget_counts_a_slot_per_session_as_long_as_the_longest(lms):
    per_token = TargetEngine(lms["target"], 4, 60, 8).kv_bytes_per_token
    engine = TargetEngine(lms["target"], 4, 60, 8, max_cache_mb=100 * per_token / 2**20)
    # 100 tokens: two sessions of up to 50, or one of 60 and none beside it
    assert engine.open_many([OpenItem("a", PROMPT, max_tokens=50)])[0].error is None
    assert engine.open_many([OpenItem("b", PROMPT, max_tokens=50)])[0].error is None
    engine.close("b")
    (late,) = engine.open_many([OpenItem("c", PROMPT, max_tokens=60)])
    assert isinstance(late.error, ResourceExhausted) and "--max-cache-mb" in str(late.error)
    engine.close("a")
    assert engine.open_many([OpenItem("c", PROMPT, max_tokens=60)])[0].error is None
    assert engine.pool.allocated_bytes <= 100 * per_token


@pytest.mark.parametrize("rows", [1, 3])
def test_attention_without_repeated_heads_equals_transformers_sdpa(rows):
    """The pool's attention (query heads sharing a KV head packed as extra rows) computes
    what transformers' sdpa with repeated KV heads does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from specdec.kv_cache import slot_attention
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, rows, 16, generator=gen)
    k, v = torch.randn(2, 2, 9, 16, generator=gen), torch.randn(2, 2, 9, 16, generator=gen)
    mask = torch.ones(2, 1, rows, 9, dtype=torch.bool)
    mask[0, :, :, 6:] = False
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal, module.training = 2, True, False
    got, _ = slot_attention(module, q, k, v, mask, scaling=0.25)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
