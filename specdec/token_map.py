"""A draft output head restricted to the most frequent tokens (FR-Spec; SGLang's
--speculative-token-map).

The draft computes logits only for N frequent token ids (its head's matrix product shrinks
from V rows to N) and proposes among them; the target still verifies over the full
vocabulary, so greedy output is unchanged. Under sampling the draft's q is its softmax over
the N ids, q = 0 elsewhere: each proposal is still a draw from the q reported for it, and
tokens outside the N can still come from the target's residual (docs/sampling.md).

The token list comes from token frequencies in a corpus every machine has offline: the
Python standard library's sources (code, and English in docstrings and comments), tokenized
with the model's tokenizer; built once and cached under the cache directory, keyed by the
tokenizer's fingerprint. A JSON file of ids may be given instead.
"""

from __future__ import annotations

import json
import sysconfig
from collections import Counter
from pathlib import Path

import structlog
import torch

from .errors import InvalidArgument

log = structlog.get_logger(__name__)

CORPUS_BYTES = 6_000_000  # of the standard library's sources, in sorted path order
ROWS_MULTIPLE = 64  # head rows are padded to this (the int4/int8 kernels need multiples of 8)


def corpus_texts(limit: int = CORPUS_BYTES) -> list[str]:
    """The Python standard library's .py files (sorted by path) up to `limit` bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, size = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append(text)
        size += len(text)
        if size >= limit:
            break
    return texts


def frequent_tokens(tokenizer, texts: list[str], n: int, always: list[int] = (),
                    vocab_size: int | None = None) -> list[int]:
    """The n most frequent token ids of `texts` (ties by id), plus `always`, padded with the
    next most frequent to a multiple of ROWS_MULTIPLE (see padded); sorted."""
    counts: Counter[int] = Counter()
    for text in texts:
        counts.update(tokenizer(text, add_special_tokens=False).input_ids)
    ranked = [t for t, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return padded(set(ranked[:n]) | set(always), ranked,
                  vocab_size or len(tokenizer))


def padded(ids: set[int], ranked: list[int], vocab_size: int) -> list[int]:
    """ids plus the first of `ranked`, then the smallest ids, not already in, up to a
    multiple of ROWS_MULTIPLE (so the low-bit kernels take the head); unchanged when the
    vocabulary is too small for that. Sorted."""
    ids = set(ids)
    want = -(-len(ids) // ROWS_MULTIPLE) * ROWS_MULTIPLE
    if want > vocab_size:
        return sorted(ids)
    for t in [*ranked, *range(vocab_size)]:
        if len(ids) == want:
            break
        if t < vocab_size:
            ids.add(t)
    return sorted(ids)


def resolve(spec: str, tokenizer, fingerprint: str, vocab_size: int, always: list[int],
            cache_dir: str) -> list[int] | None:
    """The draft's token ids for a --draft-vocab value: "" or "0" = the full vocabulary
    (None); a number N = the N most frequent ids of the corpus (cached); otherwise a JSON
    file holding a list of ids."""
    if spec in ("", "0"):
        return None
    always = [t for t in always if t < vocab_size]  # (a tokenizer may name one beyond)
    if spec.isdigit():
        n = int(spec)
        name = f"{fingerprint[:16]}-stdlib-top{n}-pad{ROWS_MULTIPLE}.json"
        cached = Path(cache_dir) / "token-maps" / name
        if cached.exists():
            ids = json.loads(cached.read_text())["ids"]
        else:
            ids = frequent_tokens(tokenizer, corpus_texts(), n, always, vocab_size)
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps({"source": "python standard library", "n": n,
                                          "ids": ids}))
            log.info("built the draft's token map", path=str(cached), tokens=len(ids))
    else:
        try:
            ids = json.loads(Path(spec).read_text())
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"--draft-vocab {spec!r}: not a number and not a readable "
                                  f"JSON list of token ids ({e})") from None
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise InvalidArgument(f"--draft-vocab {spec}: expected a JSON list of token ids")
        ids = padded(set(ids) | set(always), [], vocab_size)
    if not ids or ids[0] < 0 or ids[-1] >= vocab_size:
        raise InvalidArgument(f"--draft-vocab: token ids must be in [0, {vocab_size})")
    return ids


@torch.no_grad()
def restrict_head(model, ids: list[int]) -> torch.Tensor:
    """Replace the model's output head by one computing logits for `ids` only (a copy of
    those rows: a tied embedding is left as it was). Returns ids as a tensor: column j of
    the new logits is token ids[j]."""
    head = model.get_output_embeddings()
    index = torch.tensor(ids, dtype=torch.int64, device=head.weight.device)
    small = torch.nn.Linear(head.weight.shape[1], len(ids), bias=head.bias is not None,
                            dtype=head.weight.dtype, device=head.weight.device)
    small.weight.copy_(head.weight[index])
    if head.bias is not None:
        small.bias.copy_(head.bias[index])
    model.set_output_embeddings(small)
    return index
