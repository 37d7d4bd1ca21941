"""Draftless proposals: prompt lookup (n-gram matching over the tokens a session holds).

The last n tokens of a session are looked up earlier in its own tokens (prompt and generated
text); if they occurred before, the tokens that followed that occurrence are proposed. Code
edits, quoted text and repetitive output make these nearly free proposals. As a sampling
proposal the lookup is deterministic: its q is a point mass on the proposed token, so the
target's ratio rule accepts it with probability p(token) and otherwise draws from p with
that token removed (docs/sampling.md).
"""

from __future__ import annotations

import numpy as np


def lookup(tokens: list[int] | np.ndarray, k: int, max_n: int = 4, min_n: int = 2) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the longest suffix of
    `tokens` of length in [min_n, max_n]; [] when no such suffix occurred before.

    Longer suffixes are tried first (a longer match predicts better); among occurrences of
    one suffix the most recent wins (nearest context)."""
    seq = np.asarray(tokens, dtype=np.int64)
    length = len(seq)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        if n < 1:
            break
        suffix = seq[length - n:]
        # windows[i] = seq[i:i+n] for every start i whose window ends before the suffix.
        windows = np.lib.stride_tricks.sliding_window_view(seq[:length - 1], n)   # [L-n, n]
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return seq[start:start + k].tolist()
    return []
