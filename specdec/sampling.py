"""Sampling parameters, logit warping and seeded generators, shared by draft and target.

Both services warp logits with the same function, so the accept/reject step compares the
distributions each side actually samples from. Pure tensor code: no grpc, no I/O.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from .errors import InvalidArgument


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0  # 1 = no nucleus cut
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> SamplingParams:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidArgument(f"temperature must be a number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0 (0 = no limit), got {self.top_k}")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**64:
            raise InvalidArgument(f"seed must be in [0, 2^64), got {self.seed}")
        return self


GREEDY = SamplingParams()


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Logits [N, V] -> float32 probabilities [N, V] after temperature, top-k, top-p.

    The order is the one Hugging Face's generate uses: temperature, then top-k, then
    top-p. Top-p keeps the smallest set of most likely tokens whose mass reaches top_p
    (always at least the most likely token). Masked tokens get probability exactly 0.
    """
    logits = logits.float() / params.temperature
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]   # [N, 1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs             # [N, V]
        drop_sorted = mass_before >= params.top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits.softmax(dim=-1)


def generator_for(seed: int, role: str, device: torch.device | str) -> torch.Generator:
    """A session's generator on one service: its own stream, derived from (seed, role), so
    the draft's and the target's draws are independent yet both reproducible."""
    digest = hashlib.sha256(f"specdec:{role}:{seed}".encode()).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "little"))
    return gen


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token id drawn from probs [V]."""
    return int(torch.multinomial(probs, 1, generator=generator))
