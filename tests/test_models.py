"""Model loading: the real path from a saved directory, dtype choice and CPU bf16 safety."""

import os
import signal

import torch

from specdec import models
from specdec.models import cpu_bf16_usable, load_model


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
