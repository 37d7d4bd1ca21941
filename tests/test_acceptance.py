"""The greedy accept rule, on constructed logits."""

import torch

from specdec.acceptance import greedy_accept


def logits_for(argmaxes: list[int], vocab: int = 8) -> torch.Tensor:
    """[len, vocab] logits whose row i has its maximum at argmaxes[i]."""
    rows = torch.zeros(len(argmaxes), vocab)
    rows[torch.arange(len(argmaxes)), torch.tensor(argmaxes)] = 5.0
    return rows


def test_all_accepted_gives_bonus_token():
    assert greedy_accept(torch.tensor([3, 1, 4]), logits_for([3, 1, 4, 7])) == (3, 7)


def test_first_mismatch_gives_recovered_token():
    assert greedy_accept(torch.tensor([3, 1, 4]), logits_for([3, 2, 4, 7])) == (1, 2)


def test_mismatch_at_first_position():
    assert greedy_accept(torch.tensor([5, 1]), logits_for([0, 1, 2])) == (0, 0)


def test_later_matches_after_a_mismatch_do_not_count():
    assert greedy_accept(torch.tensor([1, 9 % 8, 3]), logits_for([1, 2, 3, 4])) == (1, 2)


def test_no_proposals_is_plain_decoding():
    assert greedy_accept(torch.tensor([], dtype=torch.int64), logits_for([6])) == (0, 6)
