"""The peer: Hugging Face transformers' assisted generation, in-process, on the same pair,
prompts, dtype and threads — `target.generate(assistant_model=draft)` and the target's own
`generate`, timed the same way as specdec (tokens / wall time)."""

from __future__ import annotations

import json
import time

import torch
from tqdm import tqdm

from bench.stats import speedup
from specdec.config import default_cache_dir
from specdec.models import load_model


def best_run(records: list[dict], domain: str, temp: float, fixed: bool = False) -> dict | None:
    """specdec's fastest speculative configuration for a domain and temperature (fixed:
    among the fixed-K ones only)."""
    rows = [r for r in records if r["system"] == "specdec" and r["domain"] == domain
            and r["temperature"] == temp and r["k"] > 0 and not (fixed and r.get("adaptive"))]
    return max(rows, key=lambda r: r["tokens_per_s"]) if rows else None


def timed_generate(model, ids, max_new: int, temp: float, top_p: float, seed: int,
                   assistant=None, k: int = 0) -> dict:
    kw = {"do_sample": temp > 0, "max_new_tokens": max_new, "min_new_tokens": max_new,
          "pad_token_id": model.generation_config.eos_token_id}
    if temp > 0:
        kw.update(temperature=temp, top_p=top_p, top_k=0)
    if assistant is not None:
        kw.update(assistant_model=assistant)
        assistant.generation_config.num_assistant_tokens = k
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        assistant.generation_config.assistant_confidence_threshold = 0.0
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), **kw)
    total = time.perf_counter() - start
    return {"tokens": out.shape[1] - len(ids), "total_s": total}


def run_peer(draft: str, target: str, dtype: str, draft_dtype: str | None, tokenizer, plan,
             records: list[dict], base: dict, out) -> list[dict]:
    """For each domain and temperature in {0, 0.7} swept: HF target-only and HF assisted
    generation with the fixed K specdec did best with; one record each, compared with
    specdec's fastest configuration (adaptive included)."""
    from bench.run import swept_prompts

    cache = default_cache_dir()
    tgt = load_model(target, dtype, "cpu", cache).model
    dft = load_model(draft, draft_dtype or dtype, "cpu", cache).model
    temps = [t for t in plan.temps if t in (0.0, 0.7)]
    work = [(d, t) for d in plan.domains for t in temps]
    new = []
    for domain, temp in tqdm(work, desc="HF peer", unit="config"):
        ours = best_run(records, domain, temp)
        # HF runs a constant K: the best fixed K of the sweep (an adaptive run's cap would
        # handicap it), or the cap when only adaptive runs were swept
        k = (best_run(records, domain, temp, fixed=True) or ours)["k"]
        plain_runs, assisted_runs = [], []
        for prompt, seed in swept_prompts(records, domain, temp):
            ids = tokenizer(prompt).input_ids
            plain_runs.append(timed_generate(tgt, ids, plan.max_new_tokens, temp, plan.top_p,
                                             seed))
            assisted_runs.append(timed_generate(tgt, ids, plan.max_new_tokens, temp, plan.top_p,
                                                seed, dft, k))
        for system, runs, kk in (("hf_target_only", plain_runs, 0),
                                 ("hf_assisted", assisted_runs, k)):
            tps = sum(r["tokens"] for r in runs) / sum(r["total_s"] for r in runs)
            rec = {**base, "system": system, "domain": domain, "temperature": temp, "k": kk,
                   "prompts": len(runs), "tokens": sum(r["tokens"] for r in runs),
                   "tokens_per_s": tps, "runs": runs}
            rec["specdec_speedup_vs_this"] = speedup(ours["tokens_per_s"], tps)
            new.append(rec)
            out.write(json.dumps(rec) + "\n")
    return new
