"""Model loading: the real path from a saved directory, dtype choice and CPU bf16 safety."""

import os
import signal

import torch
import torch.nn.functional as F

from specdec import models
from specdec.models import cpu_bf16_usable, load_model
from specdec.wide_rows import WIDE_ROWS


def test_amx_cpu_gets_isa_cap_and_a_crashing_probe_means_no_bf16(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    crash = f"import os, signal; os.kill(os.getpid(), {int(signal.SIGILL)})"  # a real SIGILL
    assert not cpu_bf16_usable(cpuinfo="flags : avx512f amx_bf16 amx_tile", probe=crash)
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE_BF16"


def test_user_choice_of_isa_is_kept(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_bf16_usable(cpuinfo="flags : amx_tile", probe="pass")
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_bf16_falls_back_to_float32_when_the_probe_fails(model_dirs, monkeypatch, tmp_path):
    monkeypatch.setattr(models, "cpu_bf16_usable", lambda: False)
    lm = load_model(str(model_dirs["target"]), "bfloat16", "cpu", str(tmp_path))
    assert lm.dtype == torch.float32 and lm.dtype_name == "float32"


def test_loaded_model_reports_its_facts(lms):
    lm = lms["target"]
    assert lm.vocab_size == 320 and lm.max_context_length == 192
    assert lm.eos_token_ids == [lm.tokenizer.convert_tokens_to_ids("<eos>")]
    assert lm.tokenizer_fingerprint == lms["draft_identical"].tokenizer_fingerprint
    assert lm.tokenizer_fingerprint != lms["other_vocab"].tokenizer_fingerprint


def test_without_bf16_kernels_wide_bf16_passes_compute_in_float32(model_dirs, monkeypatch,
                                                                   tmp_path):
    """On a CPU without bf16 matrix kernels, where a bf16 model cannot run on fp16 weights
    (no fbgemm: test_fp16_weights.py; or int8/int4 layers' dense paths), its passes of
    WIDE_ROWS rows or more (prefills) multiply in float32, and narrower ones (steps, verify
    passes) stay as they are; the model computes the same logits up to bf16 rounding."""
    monkeypatch.setattr(models, "cpu_bf16_usable", lambda: True)
    monkeypatch.setattr(models.fp16_weights, "available", lambda: False)
    loaded = {}
    for fast in (True, False):
        monkeypatch.setattr(models, "cpu_bf16_fast", lambda fast=fast: fast)
        loaded[fast] = load_model(str(model_dirs["target"]), "bfloat16", "cpu", str(tmp_path))
    native, upcast = loaded[True].model, loaded[False].model
    layer = upcast.model.layers[0].mlp.up_proj
    torch.manual_seed(0)
    for rows in (WIDE_ROWS - 1, WIDE_ROWS):
        x = torch.randn(1, rows, layer.in_features, dtype=torch.bfloat16)
        wide = F.linear(x.float(), layer.weight.float()).to(torch.bfloat16)
        narrow = F.linear(x, layer.weight)
        assert torch.equal(layer(x), wide if rows >= WIDE_ROWS else narrow), rows
    ids = torch.randint(3, 300, (1, WIDE_ROWS + 16))
    with torch.inference_mode():
        assert torch.equal(native(ids[:, :5]).logits, upcast(ids[:, :5]).logits)
        a, b = native(ids).logits.float(), upcast(ids).logits.float()
    assert torch.allclose(a, b, atol=0.1, rtol=0.05)
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
