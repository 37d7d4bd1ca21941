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


# ---- sampling (temperature > 0): the ratio rule of Leviathan et al. / Chen et al. 2023 ----

def rejection_sample(draft_token_ids: torch.Tensor, draft_probs: torch.Tensor,
                     target_probs: torch.Tensor, generator: torch.Generator) -> tuple[int, int]:
    """Speculative sampling: the emitted tokens have exactly the target's distribution.

    draft_token_ids: [K]       proposals d_1..d_K, d_i drawn from draft_probs[i-1]
    draft_probs:     [K, V]    q: the draft's warped distributions the proposals came from
    target_probs:    [K+1, V]  p: the target's warped distributions (row K: after all K)
    Accept d_i with probability min(1, p(d_i) / q(d_i)), in order, until the first
    rejection; there emit a recovered token from norm(max(0, p - q)); if all K are
    accepted, emit a bonus token from p[K]. Returns (num_accepted, next_token_id).
    """
    k = draft_token_ids.shape[0]
    rows = torch.arange(k)
    uniforms = torch.rand(k, generator=generator, dtype=torch.float64)          # [K]
    n = accepted_prefix(target_probs[rows, draft_token_ids], draft_probs[rows, draft_token_ids],
                        uniforms)
    if n == k:
        return n, int(torch.multinomial(target_probs[k], 1, generator=generator))    # bonus
    recovered = residual(target_probs[n], draft_probs[n])                           # [V]
    return n, int(torch.multinomial(recovered, 1, generator=generator))


def accepted_prefix(target_p: torch.Tensor, draft_q: torch.Tensor,
                    uniforms: torch.Tensor) -> int:
    """How many proposals in a row pass u_i < p(d_i) / q(d_i) (written u_i * q < p, so
    q = 0 never divides; a proposal with q = 0 cannot have been sampled, p = 0 is rejected).

    target_p, draft_q, uniforms: [K] (float64 recommended; all three are compared exactly).
    """
    passed = uniforms.double() * draft_q.double() < target_p.double()              # [K]
    return int(passed.to(torch.int64).cumprod(dim=0).sum())


def residual(target_p: torch.Tensor, draft_q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over a row (or a subset of ids holding all of p's mass) [V].

    A rejection implies p < q somewhere, hence p > q elsewhere and a positive mass; should
    rounding leave none, p itself is the distribution to sample (p == q up to rounding).
    """
    diff = (target_p.double() - draft_q.double()).clamp_min(0.0)
    total = diff.sum()
    return diff / total if total > 0 else target_p.double() / target_p.double().sum()


def first_accepted_candidate(candidate_p: torch.Tensor, candidate_q: torch.Tensor,
                             uniforms: torch.Tensor) -> int | None:
    """Sample the recovered token by rejection, without the draft's whole row.

    Candidates y_m ~ p (i.i.d.) are accepted with probability max(0, 1 - q(y_m)/p(y_m));
    the first accepted one is an exact draw from norm(max(0, p - q)), since
    P(y_m = y, accepted) = max(0, p(y) - q(y)). Returns its index, or None if every
    candidate was refused (the caller then samples residual() over the full row, which
    keeps the overall draw exact).

    candidate_p, candidate_q, uniforms: [M]; candidate_p > 0 (candidates came from p).
    """
    accept = uniforms.double() * candidate_p.double() < candidate_p.double() - candidate_q.double()
    hits = accept.nonzero()
    return int(hits[0]) if hits.numel() else None
