"""The accept/reject rule of speculative decoding, as pure functions (no I/O, no state).

Vocabulary (as in vLLM's rejection sampler): the draft proposes K tokens; the target accepts
a prefix of them ("accepted" tokens) and then emits one token of its own: a "recovered" token
at the first rejected position, or a "bonus" token when all K were accepted.
"""

from __future__ import annotations

import torch


def greedy_accept(draft_token_ids: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, int]:
    """Greedy verification: keep proposals while they equal the target's argmax.

    draft_token_ids: [K]       the draft's proposals d_1..d_K
    target_logits:   [K+1, V]  row i = target logits after the prefix and d_1..d_i
                               (row 0 predicts d_1; row K predicts the bonus token)
    Returns (num_accepted, next_token_id): the accepted prefix length n (0..K) and the
    target's argmax at row n, which is the recovered token if n < K, else the bonus token.
    The output therefore equals the target's own greedy decoding, token for token.
    """
    target_ids = target_logits.argmax(dim=-1)                   # [K+1]
    matches = draft_token_ids == target_ids[:-1]                # [K]
    num_accepted = int(matches.to(torch.int64).cumprod(dim=0).sum())
    return num_accepted, int(target_ids[num_accepted])
