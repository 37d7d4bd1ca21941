"""bench.gpu phase Q's code (bench/gpu_lowbit.py) on a CPU: the tiny draft shape in bf16 with
the CUDA int4 kernels replaced by their stand-ins (fake_int4_kernels), so the phase's
quantizing, timing, dequantized reference and greedy comparison run here as on a GPU; the
real kernels' figures need one (bench.gpu on CUDA)."""

import torch

from bench import gpu_models as gm
from bench.gpu_lowbit import lowbit_check
from bench.gpu_report import lowbit_section
from specdec import fp16_weights
from specdec import quantize as quantize_module
from specdec.quantize import int4_group_size
from specdec.quantize_cuda import CudaInt4Linear


def cpu_int4(model, scheme):
    """quantize() as on CUDA (specdec.quantize_cuda.quantize_model), for a model on a CPU."""
    assert scheme == "int4"
    counts = {"quantized": 0, "kept": 0, "cached": 0}
    for name, linear in [(n, m) for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)]:
        fp16_weights.replace_module(model, name,
                                    CudaInt4Linear(linear, int4_group_size(linear.in_features)))
        counts["quantized"] += 1
    return counts


def test_phase_q_code_path_with_stand_in_kernels(fake_cuda_kernels, monkeypatch):
    monkeypatch.setattr(quantize_module, "quantize", cpu_int4)
    model = gm.build_model("tiny-draft", torch.device("cpu"), torch.bfloat16, seed=2)
    prompt = gm.prompt_ids(16, 512)
    q = lowbit_check(model, prompt, warmup=1, repeats=3, budget_s=1.0, tokens=8)
    assert q["counts"]["quantized"] == 2 * 7 + 1  # 7 per layer and the (tied) head
    assert q["int4"]["step_1"]["ms"] > 0 and q["bf16"]["pass_16"]["ms"] > 0
    assert q["int4_weight_bytes"] < q["dense_weight_bytes"]
    assert q["engine_int4"]["draft_step_ms"] > 0  # through DraftEngine (no graphs on a CPU)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    g = q["greedy_vs_dequantized"]
    assert g["tokens"] == 8 and g["same"] >= 6  # (bf16 rounding may flip a near-tie)
    assert g["prompt_logits_mean_abs_diff"] < 0.05 * g["prompt_logits_std"]
    assert q["packing_ok"] and 0 < q["weights_vs_original_max_rel_err"] < 0.2
    md = "\n".join(lowbit_section(q))
    assert "| int4 |" in md and f"{g['same']}/8 the same" in md and "int4 " in md
