"""The ratio rule (acceptance.py) and the logit warping (sampling.py), on constructed
distributions: exact cases by construction, distributional claims by chi-square tests."""

import math

import pytest
import torch

from chisq import chi_square_p_value
from specdec.acceptance import (
    accepted_prefix,
    first_accepted_candidate,
    rejection_sample,
    residual,
)
from specdec.sampling import SamplingParams, warp

V = 6


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def one_hot(token: int, vocab: int = V) -> torch.Tensor:
    row = torch.zeros(vocab)
    row[token] = 1.0
    return row


def test_perfect_match_accepts_everything_and_adds_a_bonus_token():
    p = torch.softmax(torch.randn(4, V, generator=gen(1)), dim=-1)     # [K+1, V]
    q = p[:3].clone()                                                   # [K, V]
    g = gen(2)
    for _ in range(200):
        drafts = torch.multinomial(q, 1, generator=g).squeeze(-1)      # [K]
        n, token = rejection_sample(drafts, q, p, g)
        assert n == 3 and 0 <= token < V


def test_certain_rejection_at_the_first_position_recovers_from_the_residual():
    q = torch.stack([one_hot(2), one_hot(0)])                           # draft is sure of 2
    p = torch.stack([torch.tensor([0.5, 0.5, 0, 0, 0, 0]), one_hot(1), one_hot(1)])
    g = gen(3)
    seen = set()
    for _ in range(100):
        n, token = rejection_sample(torch.tensor([2, 0]), q, p, g)
        assert n == 0 and token in (0, 1)      # p(2) = 0: rejected; recovered from (p - q)+
        seen.add(token)
    assert seen == {0, 1}


def test_all_accepted_gives_the_bonus_from_the_last_target_row():
    q = torch.stack([one_hot(1), one_hot(4)])
    p = torch.stack([one_hot(1), one_hot(4), one_hot(5)])
    assert rejection_sample(torch.tensor([1, 4]), q, p, gen()) == (2, 5)


def test_no_proposals_samples_the_target():
    p = torch.stack([one_hot(3)])
    assert rejection_sample(torch.tensor([], dtype=torch.int64), torch.zeros(0, V), p,
                            gen()) == (0, 3)


def test_accepted_prefix_edges():
    u = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    assert accepted_prefix(torch.tensor([0.2, 0.0, 0.9]), torch.tensor([0.1, 0.3, 0.2]), u) == 1
    # p >= q always passes, whatever u
    assert accepted_prefix(torch.tensor([0.3, 0.3]), torch.tensor([0.3, 0.1]),
                           torch.tensor([0.999999, 0.999999], dtype=torch.float64)) == 2
    # q = 0 (never sampled in practice) passes when p > 0; p = q = 0 is rejected
    assert accepted_prefix(torch.tensor([0.1, 0.0]), torch.tensor([0.0, 0.0]),
                           torch.tensor([0.9, 0.1], dtype=torch.float64)) == 1
    # a later pass after a rejection does not count
    assert accepted_prefix(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]), u[:2]) == 0


def test_residual_edges():
    p, q = torch.tensor([0.5, 0.3, 0.2, 0.0]), torch.tensor([0.1, 0.6, 0.0, 0.3])
    torch.testing.assert_close(residual(p, q), torch.tensor([0.4, 0.0, 0.2, 0.0],
                                                            dtype=torch.float64) / 0.6)
    same = torch.tensor([0.25, 0.75, 0.0, 0.0])  # no positive residual: fall back to p
    torch.testing.assert_close(residual(same, same), same.double())


def test_first_accepted_candidate():
    # candidate 0 has q >= p (never accepted), candidate 1 has q = 0 (always accepted)
    p, q = torch.tensor([0.2, 0.4]), torch.tensor([0.5, 0.0])
    u = torch.tensor([0.0, 0.99], dtype=torch.float64)
    assert first_accepted_candidate(p, q, u) == 1
    assert first_accepted_candidate(p[:1], q[:1], u[:1]) is None


def output_distribution_test(p_rows, q_rows, k, draws, seed):
    """Draw proposals from q, apply the rule, return the p-value of the first emitted
    token against p[0] (what the target alone would emit)."""
    g = gen(seed)
    counts = torch.zeros(p_rows.shape[-1])
    for _ in range(draws):
        drafts = torch.multinomial(q_rows[:k], 1, generator=g).squeeze(-1)
        n, token = rejection_sample(drafts, q_rows[:k], p_rows[:k + 1], g)
        counts[drafts[0] if n > 0 else token] += 1
    return chi_square_p_value(counts, p_rows[0])


@pytest.mark.parametrize("case", ["dense", "disjoint_supports", "top_k_and_top_p"])
def test_first_token_has_the_target_distribution(case):
    g = gen(7)
    p_logits, q_logits = torch.randn(3, 10, generator=g), torch.randn(3, 10, generator=g)
    if case == "dense":
        p_rows, q_rows = p_logits.softmax(-1), q_logits.softmax(-1)
    elif case == "disjoint_supports":  # q's mass mostly where p has none
        p_rows = warp(p_logits, SamplingParams(1.0, top_k=4))
        q_rows = warp(-p_logits, SamplingParams(1.0, top_k=6))
    else:
        p_rows = warp(p_logits, SamplingParams(0.7, top_k=5, top_p=0.9))
        q_rows = warp(q_logits, SamplingParams(0.7, top_k=8, top_p=0.8))
    assert chi_square_p_value(p_rows[0] * 6000, p_rows[0]) > 0.99  # helper sanity
    assert output_distribution_test(p_rows, q_rows, k=2, draws=6000, seed=8) > 0.01


def test_the_distribution_test_rejects_a_wrong_rule():
    """The same check fails for 'accept whenever p(x) > 0': it has power."""
    g = gen(9)
    p_rows = torch.randn(2, 8, generator=g).softmax(-1)
    q_rows = (torch.randn(2, 8, generator=g) * 3).softmax(-1)
    counts = torch.zeros(8)
    for _ in range(6000):
        counts[torch.multinomial(q_rows[0], 1, generator=g)] += 1  # always accepted
    assert chi_square_p_value(counts, p_rows[0]) < 1e-6


def test_warp_temperature_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    torch.testing.assert_close(warp(logits, SamplingParams(1.0)), logits.exp())
    assert warp(logits, SamplingParams(1.0, top_k=2))[0].tolist() == pytest.approx(
        [2 / 3, 1 / 3, 0, 0])
    # top_p 0.7: 0.5 < 0.7, 0.5 + 0.25 >= 0.7 -> keep the first two
    assert warp(logits, SamplingParams(1.0, top_p=0.7))[0].tolist() == pytest.approx(
        [2 / 3, 1 / 3, 0, 0])
    assert warp(logits, SamplingParams(1.0, top_p=0.1))[0].tolist() == pytest.approx(
        [1, 0, 0, 0])  # always at least the most likely token
    cold = warp(logits, SamplingParams(0.5))[0]
    assert cold[0] == pytest.approx(0.25 / (0.25 + 0.0625 + 0.0225 + 0.01))


@pytest.mark.parametrize("bad, words", [
    (SamplingParams(-0.1), "temperature"), (SamplingParams(math.nan), "temperature"),
    (SamplingParams(1.0, top_k=-1), "top_k"), (SamplingParams(1.0, top_p=0.0), "top_p"),
    (SamplingParams(1.0, top_p=1.5), "top_p"),
])
def test_bad_sampling_params(bad, words):
    from specdec.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match=words):
        bad.validate()
