"""Prompt lookup (specdec.ngram.lookup) against its definition, and at the engine level."""

from hypothesis import given, settings
from hypothesis import strategies as st

from specdec.ngram import lookup


def occurs_before(seq: list[int], n: int) -> list[int]:
    """Starts i < len(seq) - n with seq[i:i+n] == the last n tokens (brute force)."""
    suffix = seq[len(seq) - n:]
    return [i for i in range(len(seq) - n) if seq[i:i + n] == suffix]


def test_examples():
    assert lookup([1, 2, 3, 4, 5, 1, 2], 3) == [3, 4, 5]
    assert lookup([1, 2, 3, 9, 1, 2, 7, 1, 2], 2) == [7, 1]  # the most recent occurrence
    assert lookup([7, 1, 2, 3, 8, 0, 2, 3, 5, 1, 2, 3], 1) == [8]  # longest suffix first
    assert lookup([1, 2, 3, 1, 2], 10) == [3, 1, 2]  # cut at the end of the tokens
    assert lookup([1, 2, 3, 4], 4) == []  # nothing repeats
    assert lookup([5, 5], 3) == []  # a 1-token match is below the default min_n of 2
    assert lookup([5, 5], 3, min_n=1) == [5]
    assert lookup([4], 3, min_n=1) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40), st.integers(1, 6),
       st.integers(1, 3), st.integers(0, 3))
def test_matches_the_brute_force_definition(seq, k, min_n, extra):
    max_n = min_n + extra
    got = lookup(seq, k, max_n, min_n)
    for n in range(min(max_n, len(seq) - 1), min_n - 1, -1):
        starts = occurs_before(seq, n)
        if starts:
            start = starts[-1] + n
            assert got == seq[start:start + k]
            return
    assert got == []
