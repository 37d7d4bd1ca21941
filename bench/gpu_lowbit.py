"""bench.gpu phase Q: weight-only int4 on CUDA (specdec.quantize_cuda) on the draft's shape.

A bare 1-token step over a cached prompt and a pass of the whole prompt (its rows through the
int4 kernel too), bf16 and int4 side by side, the weight bytes of each, the int4 draft's step
through DraftEngine as served (CUDA graphs; phase A has bf16's), and whether the int4
model's greedy tokens agree with a bf16 copy holding the int4 model's own dequantized weights
(read back through the kernel): the two differ only by rounding in the products, so an
error that depends on the number of rows shows as logits far apart. A wrong packing would give
both the same wrong weights: the weights read back are compared with the original bf16 ones
too (packing_ok: off by no more than int4 rounding). Random weights make near-ties common,
so a few differing tokens need not mean a fault; the logit difference against their spread
is the sharper check.
Off CUDA (or not in bf16) bench.gpu records the phase as skipped.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from bench import gpu_models as gm
from bench.gpu_timing import engine_costs, measure, sync


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@torch.inference_mode()
def pass_costs(model, prompt: list[int], *, warmup: int, repeats: int, budget_s: float) -> dict:
    from transformers import DynamicCache
    dev = model.device
    ids = torch.tensor([prompt], device=dev)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
    base = len(prompt) - 1
    kw = dict(warmup=warmup, repeats=repeats, budget_s=budget_s / 2)
    return {"step_1": measure(lambda: model(input_ids=ids[:, -1:], past_key_values=cache,
                                            use_cache=True, logits_to_keep=1).logits,
                              dev, setup=lambda: cache.crop(base - cache.get_seq_length()), **kw),
            f"pass_{len(prompt)}": measure(lambda: model(input_ids=ids, logits_to_keep=1).logits,
                                           dev, **kw)}


@torch.inference_mode()
def greedy(model, prompt: list[int], tokens: int) -> tuple[list[int], torch.Tensor]:
    """`tokens` greedy tokens after the prompt, and the prompt's logits [T, V] (float32)."""
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=torch.tensor([prompt], device=model.device), past_key_values=cache,
                   use_cache=True).logits[0].float()
    out, nxt = [], logits[-1].argmax()
    for _ in range(tokens):
        out.append(int(nxt))
        nxt = model(input_ids=nxt.view(1, 1), past_key_values=cache,
                    use_cache=True).logits[0, -1].argmax()
    return out, logits


def lowbit_check(model, prompt: list[int], *, warmup: int, repeats: int, budget_s: float,
                 tokens: int = 32) -> dict:
    """Quantizes `model` (bf16, on CUDA) to int4 in place; see the module docstring."""
    from specdec.quantize import quantize
    from specdec.quantize_cuda import CudaInt4Linear
    kw = dict(warmup=warmup, repeats=repeats, budget_s=budget_s / 3)
    out: dict = {"dense_weight_bytes": weight_bytes(model),
                 "bf16": pass_costs(model, prompt, **kw)}
    reference = copy.deepcopy(model)
    t0 = time.monotonic()
    out["counts"] = quantize(model, "int4")
    sync(model.device)
    out["quantize_s"] = round(time.monotonic() - t0, 3)
    out["int4_weight_bytes"] = weight_bytes(model)
    out["int4"] = pass_costs(model, prompt, **kw)
    out["step_int4_over_bf16"] = round(out["int4"]["step_1"]["ms"] / out["bf16"]["step_1"]["ms"],
                                       3)
    try:  # as served: through DraftEngine, with CUDA graphs where they capture
        e = engine_costs(gm.loaded(model, "draft-int4"), prompt, 1, rows=(1,), **kw)
        out["engine_int4"] = {"draft_step_ms": e["draft_step_ms"], "graphs": e["draft_graphs"]}
    except Exception as e:  # (keep the figures above)
        out["engine_int4"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    worst = 0.0  # the weights read back through the kernel against the original ones: a
    with torch.no_grad():  # wrong packing is off by about the weights themselves, int4
        for name, m in model.named_modules():  # rounding by at most ~1/30 of a group's range
            if isinstance(m, CudaInt4Linear):  # (a new parameter: unties a tied head)
                w, original = m.dequantized(), reference.get_submodule(name).weight
                worst = max(worst, float((w.float() - original.float()).abs().max()
                                         / original.float().abs().max().clamp(min=1e-12)))
                reference.get_submodule(name).weight = nn.Parameter(w, requires_grad=False)
    out["weights_vs_original_max_rel_err"] = round(worst, 4)
    out["packing_ok"] = worst < 0.2
    got, got_logits = greedy(model, prompt, tokens)
    want, want_logits = greedy(reference, prompt, tokens)
    del reference
    diff = (got_logits - want_logits).abs()
    out["greedy_vs_dequantized"] = {
        "tokens": tokens, "same": sum(a == b for a, b in zip(got, want, strict=True)),
        "same_prefix": next((i for i, (a, b) in enumerate(zip(got, want, strict=True))
                             if a != b), tokens),
        "prompt_argmax_same": round(float((got_logits.argmax(-1) == want_logits.argmax(-1))
                                          .float().mean()), 4),
        "prompt_logits_max_abs_diff": round(float(diff.max()), 4),
        "prompt_logits_mean_abs_diff": round(float(diff.mean()), 5),
        "prompt_logits_std": round(float(want_logits.std()), 4)}
    return out
