"""Tiny seeded float32 models and a byte-level BPE tokenizer trained on the fly.

Everything is built from configs, saved with save_pretrained to a directory and loaded back
through specdec's real loading path; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

CORPUS = """\
def add(a, b):
    return a + b
The quick brown fox jumps over the lazy dog. A draft model proposes tokens and the target
model verifies them in one forward pass, keeping the longest valid prefix and adding one
token of its own. Speculative decoding makes large models answer faster with exactly the
same output. for i in range(10): print(i * i) # squares of the first ten integers
class Stack:
    def __init__(self):
        self.items = []
    def push(self, item):
        self.items.append(item)
Once upon a time there was a small server that streamed tokens to many happy users.
"""
EOS = "<eos>"
# A minimal chat template (for the OpenAI-compatible /v1/chat/completions tests).
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def train_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([CORPUS] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=EOS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(vocab_size: int, eos_token_id: int, **overrides) -> Qwen2Config:
    kw = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=192,
              initializer_range=0.2, tie_word_embeddings=False, eos_token_id=eos_token_id,
              bos_token_id=None, pad_token_id=eos_token_id)
    kw.update(overrides)
    return Qwen2Config(**kw)


def build_model(config: Qwen2Config, seed: int):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def perturb(model, scale: float, seed: int):
    """A copy of `model` with Gaussian noise (relative `scale`) added to every weight."""
    copy = build_model(model.config, 0)
    copy.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std() * scale)
    return copy


def save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_model_dirs(root: Path) -> dict[str, Path]:
    """target, and three drafts: identical, perturbed (medium acceptance), unrelated (low);
    plus other_vocab, a draft whose vocabulary differs from the target's."""
    tok = train_tokenizer()
    vocab = len(tok)
    eos = tok.convert_tokens_to_ids(EOS)
    target = build_model(tiny_config(vocab, eos), seed=1)
    dirs = {
        "target": save(target, tok, root / "target"),
        "draft_identical": save(target, tok, root / "draft_identical"),
        "draft_perturbed": save(perturb(target, 0.03, seed=2), tok, root / "draft_perturbed"),
        "draft_unrelated": save(build_model(tiny_config(vocab, eos, hidden_size=32,
                                                        intermediate_size=64), seed=3),
                                tok, root / "draft_unrelated"),
    }
    other_tok = train_tokenizer(vocab_size=300)
    dirs["other_vocab"] = save(build_model(tiny_config(len(other_tok), eos), seed=4), other_tok,
                               root / "other_vocab")
    return dirs


SMALL_ALPHABET = "abcdefghijklmnop"  # 16 tokens, one per character, no EOS


def char_tokenizer(alphabet: str = SMALL_ALPHABET) -> PreTrainedTokenizerFast:
    """One token per character: a vocabulary small enough to enumerate joint distributions."""
    tk = Tokenizer(models.WordLevel({c: i for i, c in enumerate(alphabet)}, unk_token=alphabet[0]))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk)


def make_small_vocab_dirs(root: Path) -> dict[str, Path]:
    """A 16-token target and a draft with different weights (for statistical tests).
    Small init keeps the distributions spread out; no EOS, so every request runs to length."""
    tok = char_tokenizer()
    config = tiny_config(len(tok), None, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, initializer_range=0.08, pad_token_id=None)
    target = build_model(config, seed=11)
    return {"small_target": save(target, tok, root / "small_target"),
            "small_draft": save(perturb(target, 0.6, seed=12), tok, root / "small_draft")}


PROMPTS = [
    "def", "The quick", "class Stack:", "for i in range(", "Once upon a time there",
    "A draft model proposes", "return a + b", "the target model verifies them in one",
    "Speculative decoding makes large models answer faster", "print(i * i)",
    "    def push(self, item):\n        self.", "The lazy dog", "x", "# squares of the",
    "keeping the longest valid prefix and adding one token of its own.",
    "a small server that streamed tokens", "def add(a, b):\n    return", "many happy users",
    "self.items = []", "Once upon a time there was a small server that streamed tokens to many "
    "happy users. The quick brown fox jumps over the lazy dog.", "fox", "model",
]
