"""In-process timings for bench.gpu: per-pass cost of each model through specdec's engines
(phase A), bare Hugging Face forwards of the same shapes, and target-only decoding through
the engine vs Hugging Face `generate` (phase B). Times are medians, device-synchronized."""

from __future__ import annotations

import statistics
import time

import torch

from bench.gpu_models import EOS_ID

ROWS = (1, 2, 3, 5, 9)  # verify passes of K+1 rows: K = 0, 1, 2, 4, 8


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device, *, warmup: int, repeats: int, budget_s: float,
            setup=None) -> dict:
    """Run setup (untimed) + fn warmup times, then timed up to `repeats` times (at least 3;
    no more once budget_s is spent). Returns the median and min in milliseconds."""
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(1, repeats) and (len(times) < 3
                                             or time.perf_counter() - start < budget_s):
        if setup:
            setup()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"ms": round(statistics.median(times) * 1e3, 3),
            "min_ms": round(min(times) * 1e3, 3), "n": len(times)}


def _rewind(engine, sids: list[str], length: int):
    """Setup for a timed call: roll every session back to `length` tokens (untimed; also
    makes the next call differ from the last, so the engine never answers it as a retry).
    The last token is left pending (uncached), as after a real round: a verify feeds it
    with the proposals. (Engine.truncate caches every token it keeps, and a verify with
    proposals right after one would feed a row too few.)"""
    def setup():
        for sid in sids:
            held = len(engine.sessions.peek(sid).tokens)
            if held > length:
                engine.truncate(sid, held, length)
            engine._crop(engine.sessions.peek(sid), length - 1)
    return setup


def graph_stats(engine) -> dict | None:
    """The engine's CUDA graph counters (specdec.static_pass), None when it has none."""
    from dataclasses import asdict
    return None if engine.static is None else asdict(engine.static.stats)


def engine_costs(lm, prompt: list[int], sessions: int, *, warmup: int, repeats: int,
                 budget_s: float, rows=ROWS, cuda_graphs: bool = True) -> dict:
    """One model through DraftEngine (Propose of 1 and 4 tokens) and TargetEngine (verify
    passes of `rows` rows), `sessions` sessions per call, each holding `prompt`.
    cuda_graphs: the engines' --cuda-graphs (a no-op off CUDA)."""
    from specdec.draft_engine import DraftEngine, ProposeItem
    from specdec.engine import OpenItem
    from specdec.target_engine import TargetEngine, VerifyItem

    dev, pos = lm.device, len(prompt)
    sids = [f"s{i}" for i in range(sessions)]
    each = budget_s / (2 + len(rows))
    out: dict = {}
    draft = DraftEngine(lm, sessions + 1, 1e6, 16, max_cache_mb=0, cuda_graphs=cuda_graphs)
    draft.open_many([OpenItem(sid, prompt) for sid in sids])
    for k in (1, 4):
        items = [ProposeItem(sid, pos, None, [], k) for sid in sids]
        r = measure(lambda items=items: draft.propose(items), dev, warmup=warmup,
                    repeats=repeats, budget_s=each, setup=_rewind(draft, sids, pos))
        out[f"propose_{k}"] = r
    out["draft_step_ms"] = round(out["propose_4"]["ms"] / 4, 3)
    out["draft_graphs"] = graph_stats(draft)
    draft.close_many(sids)  # (free their caches)
    target = TargetEngine(lm, sessions + 1, 1e6, 16, max_cache_mb=0, cuda_graphs=cuda_graphs)
    target.open_many([OpenItem(sid, prompt) for sid in sids])
    for n in rows:
        drafts = prompt[:n - 1]  # (accepted or not, the pass is the same)
        items = [VerifyItem(sid, pos, drafts) for sid in sids]
        out[f"verify_{n}"] = measure(lambda items=items: target.verify(items), dev,
                                     warmup=warmup, repeats=repeats, budget_s=each,
                                     setup=_rewind(target, sids, pos))
    out["target_graphs"] = graph_stats(target)
    return out


@torch.inference_mode()
def bare_costs(model, prompt: list[int], sessions: int, *, warmup: int, repeats: int,
               budget_s: float, rows=ROWS) -> dict:
    """Plain Hugging Face forwards of `rows` new tokens over a cache holding the prompt
    (all sessions in one [B, rows] batch), the cache cropped back between passes."""
    from transformers import DynamicCache
    dev = model.device
    ids = torch.tensor([prompt] * sessions, device=dev)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
    base = len(prompt) - 1
    out = {}
    for n in rows:
        x = ids[:, -n:]
        out[f"forward_{n}"] = measure(
            lambda x=x, n=n: model(input_ids=x, past_key_values=cache, use_cache=True,
                                   logits_to_keep=n).logits.argmax(-1),
            dev, warmup=warmup, repeats=repeats, budget_s=budget_s / len(rows),
            setup=lambda: cache.crop(base - cache.get_seq_length()))  # (negative: drop)
    return out


def engine_target_only(lm, prompt: list[int], tokens: int, runs: int,
                       cuda_graphs: bool = True) -> dict:
    """Target-only greedy decoding through TargetEngine (open + one verify per token, no
    proposals): what a K=0 round costs the target service. Best of `runs`, after a warm-up
    run: one engine throughout, so its pool and CUDA graphs (captured in the warm-up, which
    on CUDA is as long as a run) are those of a service that has served such requests."""
    from specdec.target_engine import TargetEngine, VerifyItem
    engine = TargetEngine(lm, 2, 1e6, 16, max_cache_mb=0, cuda_graphs=cuda_graphs)
    totals = []
    for run in range(runs + 1):  # run 0 warms up
        n = tokens if run or lm.device.type == "cuda" else min(tokens, 8)
        sync(lm.device)
        start = time.perf_counter()
        sid, pos = engine.open(f"t{run}", prompt)
        for _ in range(n):
            (outcome,), _, _ = engine.verify([VerifyItem(sid, pos, [])])
            pos = outcome.position
        sync(lm.device)
        if run:
            totals.append(time.perf_counter() - start)
        engine.close(sid)
    best = min(totals)
    return {"tokens": tokens, "s": round(best, 4), "tokens_per_s": round(tokens / best, 2),
            "runs": len(totals), "graphs": graph_stats(engine)}


@torch.inference_mode()
def hf_generate(model, prompt: list[int], tokens: int, runs: int) -> dict:
    """Hugging Face `generate`, greedy, exactly `tokens` new tokens (min_new_tokens keeps
    EOS out), on the same device and dtype. Best of `runs`, after a short warm-up."""
    from transformers import GenerationConfig
    ids = torch.tensor([prompt], device=model.device)
    totals = []
    for run in range(runs + 1):
        n = tokens if run else min(tokens, 8)
        cfg = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               eos_token_id=EOS_ID, pad_token_id=EOS_ID)
        sync(model.device)
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             generation_config=cfg)
        sync(model.device)
        if run:
            totals.append(time.perf_counter() - start)
            assert out.shape[1] - ids.shape[1] == n, out.shape
    best = min(totals)
    return {"tokens": tokens, "s": round(best, 4), "tokens_per_s": round(tokens / best, 2),
            "runs": len(totals)}
