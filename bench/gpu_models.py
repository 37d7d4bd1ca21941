"""Models for bench.gpu: real Qwen2.5 shapes with random weights, built on the device.

Timing does not depend on the weights, so nothing is downloaded: a config of the real shape
is instantiated directly on the device in the benchmark's dtype. A directory holding a real
model (config.json) may be given instead. For the end-to-end phase a model is saved with
save_pretrained plus a word-level tokenizer covering its whole vocabulary, so the services
load it through specdec's real loading path.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import torch

COMMON = dict(rope_theta=1e6, max_position_embeddings=32768, rms_norm_eps=1e-6,
              hidden_act="silu", use_sliding_window=False, attention_dropout=0.0,
              eos_token_id=256, pad_token_id=256, bos_token_id=None)
FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "vocab_size", "tie_word_embeddings")
# Qwen2.5 config.json values (Hugging Face Hub, Qwen/Qwen2.5-*-Instruct), in FIELDS' order;
# tiny-*: the CPU test run, the same code path
SHAPES = {name: dict(zip(FIELDS, values, strict=True)) for name, values in {
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064, False),
    "qwen2.5-3b": (2048, 11008, 36, 16, 2, 151936, True),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936, True),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "tiny-target": (64, 128, 2, 4, 2, 512, False),
    "tiny-draft": (32, 64, 2, 2, 1, 512, True),
}.items()}
for _tiny in ("tiny-target", "tiny-draft"):
    SHAPES[_tiny]["max_position_embeddings"] = 1024
EOS_ID = 256  # its output row is zeroed: greedy decoding never ends early


def stub_missing_modules() -> list[str]:
    """specdec's engine modules import structlog (and platformdirs via specdec.config) at
    import time; where those are not installed, put inert stand-ins in sys.modules so the
    in-process phases still run. Returns the names stubbed (the services then cannot run)."""
    stubbed = []
    try:
        import structlog  # noqa: F401
    except ImportError:
        class _Quiet:
            def __getattr__(self, name):
                return lambda *a, **k: None
        mod = types.ModuleType("structlog")
        mod.get_logger = lambda *a, **k: _Quiet()
        sys.modules["structlog"] = mod
        stubbed.append("structlog")
    try:
        import platformdirs  # noqa: F401
    except ImportError:
        mod = types.ModuleType("platformdirs")
        mod.user_cache_dir = lambda app, *a, **k: os.path.join(
            os.path.expanduser("~"), ".cache", app)
        sys.modules["platformdirs"] = mod
        stubbed.append("platformdirs")
    return stubbed


def qwen2_config(shape: str, layers: int = 0):
    from transformers import Qwen2Config
    kw = {**COMMON, **SHAPES[shape]}
    if layers:
        kw["num_hidden_layers"] = layers
    return Qwen2Config(**kw)


def build_model(spec: str, device: torch.device, dtype: torch.dtype, layers: int = 0,
                seed: int = 0):
    """A model of shape `spec` (a SHAPES name) with random weights, initialized on the device
    itself (no CPU copy of the weights); or the model saved in directory `spec`."""
    from transformers import AutoModelForCausalLM
    if Path(spec, "config.json").exists():
        return AutoModelForCausalLM.from_pretrained(spec, dtype=dtype).to(device).eval()
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(qwen2_config(spec, layers), dtype=dtype)
    with torch.no_grad():
        model.get_output_embeddings().weight[EOS_ID].zero_()
    return model.eval()


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def loaded(model, name: str):
    """A specdec LoadedModel around an in-memory model (no tokenizer: ids only)."""
    from specdec.models import LoadedModel
    config = model.config.get_text_config()
    eos = model.generation_config.eos_token_id
    return LoadedModel(
        name=name, model=model, tokenizer=None, dtype=model.dtype, device=model.device,
        vocab_size=model.get_output_embeddings().out_features,  # (a low-bit head: no .weight)
        max_context_length=int(config.max_position_embeddings),
        eos_token_ids=[] if eos is None else [eos] if isinstance(eos, int) else list(eos),
        tokenizer_fingerprint="")


def prompt_ids(length: int, vocab_size: int, seed: int = 1) -> list[int]:
    """`length` pseudo-random token ids below EOS_ID."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, EOS_ID, (length,), generator=gen).tolist()


def byte_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer (as Qwen2's, which transformers rebuilds it into for a
    qwen2 config) without merges: ids 0-255 are the 256 bytes, EOS_ID is "<eos>", the rest
    are filler words ("<t257>", …), so every id the model can emit decodes; a text of N
    ASCII letters encodes to N tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<eos>"] = EOS_ID
    vocab.update({f"<t{i}>": i for i in range(EOS_ID + 1, vocab_size)})
    tk = Tokenizer(models.BPE(vocab, []))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def prompt_text(length: int, seed: int = 1) -> str:
    """`length` pseudo-random lowercase letters: `length` tokens with byte_tokenizer."""
    gen = torch.Generator().manual_seed(seed)
    return "".join(chr(97 + int(i)) for i in torch.randint(0, 26, (length,), generator=gen))


def save_model_dir(model, path: Path) -> Path:
    """The model (safetensors) and a tokenizer of its vocabulary, for --model DIR."""
    vocab = model.get_output_embeddings().weight.shape[0]
    model.save_pretrained(path)
    byte_tokenizer(vocab).save_pretrained(path)
    return path
