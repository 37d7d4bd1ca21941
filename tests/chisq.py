"""Pearson's chi-square goodness-of-fit test, small enough to read (no scipy needed)."""

from __future__ import annotations

import torch


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0,
                       ) -> float:
    """p-value of observing `counts` (any shape) under `probs` (same shape, sums to 1).

    Cells whose expected count is below min_expected are pooled into one cell, the usual
    rule that keeps the chi-square approximation valid."""
    counts, probs = counts.flatten().double(), probs.flatten().double()
    n = counts.sum()
    if bool((counts[probs == 0] > 0).any()):
        return 0.0  # an impossible outcome was observed
    expected = probs * n
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    statistic = ((obs - exp) ** 2 / exp).sum()
    dof = obs.numel() - 1
    # survival function of chi2(dof) = regularized upper incomplete gamma Q(dof/2, x/2)
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                         statistic / 2))
