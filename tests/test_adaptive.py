"""Adaptive K (coordinator.speculation.adaptive) on constructed costs and acceptance."""

import random
import statistics

import pytest

from coordinator.speculation.adaptive import Acceptance, AdaptiveK, CostCurve, VerifyCost


def test_cost_curve_interpolates_between_sizes_and_never_falls():
    curve = CostCurve()
    for x, y in ((1, 0.15), (4, 0.16), (16, 0.40), (9, 0.30), (40, 0.35)):
        curve.observe(x, y)
    assert curve(1) == pytest.approx(0.15) and curve(0.5) == pytest.approx(0.15)
    assert curve(2.5) == pytest.approx(0.155)  # between the 1 and 4 buckets
    assert curve(12.5) == pytest.approx(0.35)  # between 9 (0.30) and 16 (0.40)
    assert curve(40) == pytest.approx(0.40)  # 0.35 measured, but 16 rows cost 0.40 already
    assert curve(60) > curve(40)  # beyond the largest size: still rising


def test_cost_learnt_at_load_survives_a_quiet_spell():
    curve = CostCurve()
    curve.observe(64, 1.2)
    for _ in range(500):
        curve.observe(5, 0.18)
    assert curve(64) == pytest.approx(1.2)


def test_one_size_extrapolates_with_the_prior_slope():
    curve = CostCurve(prior_rows=16)
    for _ in range(5):
        curve.observe(4, 0.2)
    assert curve(4) == pytest.approx(0.2)
    assert curve(20) == pytest.approx(0.2 * 36 / 20)  # doubles every 16 rows beyond


def test_verify_cost_depends_on_sessions_and_borrows_for_unseen_loads():
    cost = VerifyCost()
    for rows in (1, 5, 9):
        cost.observe(1, rows, 0.15 + 0.001 * rows)
    for k in range(9):
        cost.observe(8, 8 * (k + 1), 0.27 + 0.012 * 8 * k)
    assert cost(1, 5) == pytest.approx(0.155)
    assert cost(8, 8) == pytest.approx(0.27)  # 8 rows of 8 sessions: dearer than of one
    assert cost(1, 8) < 0.16
    # 16 sessions, never seen: the 8-session curve, twice the sessions, twice the cost
    assert cost(16, 16) == pytest.approx(2 * 0.27)


def test_acceptance_counts_positions_reached():
    acc = Acceptance(decay=1.0)
    acc.record(4, 2)  # positions 0, 1 accepted; 2 rejected; 3 never reached
    acc.record(4, 4)
    assert acc.reached == [2, 2, 2, 1] and acc.accepted == [2, 2, 1, 1]
    assert acc.rates(4, prior=0.5, weight=0) == [1, 1, 0.5, 1]
    assert acc.pooled(prior=0.0, weight=3) == 6 / 10
    # shrunk towards the pooled rate; beyond the last position proposed, the pooled rate
    assert acc.rates(5, prior=0.0, weight=3) == pytest.approx([0.76, 0.76, 0.56, 0.7, 0.6])
    acc.record(1, 0)  # every position fades, reached or not
    assert acc.reached == [3, 2, 2, 1] and acc.accepted == [2, 2, 1, 1]
    decayed = Acceptance(decay=0.5)
    decayed.record(2, 2)
    decayed.record(1, 1)
    assert decayed.reached == [1.5, 0.5] and decayed.accepted == [1.5, 0.5]


def controller(verify_base: float, per_row: float, draft_step: float, load: int) -> AdaptiveK:
    c = AdaptiveK()
    for rows in range(load, load * 9 + 1, load):  # every K from 0 to 8 was seen
        c.observe_verify(load, rows, verify_base + per_row * rows)
        c.observe_propose(load, 4, 4 * draft_step)
    return c


def settle(chooser, alpha: float, rounds: int = 200, last: int = 50, measure=None) -> int:
    """Feed `rounds` rounds whose proposals are each accepted with probability alpha (seeded);
    returns the most common K of the last `last` rounds. measure(k): called with each round's
    K before its outcome is recorded (to feed its costs)."""
    rng, ks = random.Random(0), []
    for _ in range(rounds):
        k = chooser.choose(8)
        ks.append(k)
        if measure is not None:
            measure(k)
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        chooser.record(k, accepted)
    return statistics.mode(ks[-last:])


def test_nothing_measured_starts_at_one():
    assert AdaptiveK().session().choose(6) == 1


def test_one_session_with_a_cheap_draft_speculates_deep():
    # CPU-like: a verify costs about as much for 9 rows as for 1; a draft step ~8% of it
    c = controller(0.17, 0.0005, 0.014, load=1)
    assert settle(c.session(), alpha=0.9) >= 6


def test_low_acceptance_proposes_little():
    c = controller(0.17, 0.0005, 0.03, load=1)
    assert 1 <= settle(c.session(), alpha=0.4) <= 2


def test_a_loaded_verify_stops_speculation():
    # 16 sessions: each verify row costs as much as a fifth of the base pass
    c = controller(0.17, 0.035, 0.06, load=16)
    chooser = c.session()
    assert settle(chooser, alpha=0.6) == 0
    # the same session once the load falls to 2 sessions (costs measured there): it speculates
    for rows in range(2, 19, 2):
        c.observe_verify(2, rows, 0.17 + 0.002 * rows)
    assert chooser.choose(8) > 0


def test_load_shrinks_k():
    light = settle(controller(0.17, 0.004, 0.02, load=1).session(), alpha=0.8)
    heavy = settle(controller(0.17, 0.004, 0.02, load=8).session(), alpha=0.8)
    assert light > heavy


def test_a_timed_out_draft_stops_speculation_for_a_while_then_it_resumes():
    """Nothing re-measures the draft while K = 0, so the cost of a Propose that timed out
    fades with time: speculation stops after the timeout and comes back once it faded."""
    now = [0.0]
    c = controller(0.17, 0.0005, 0.014, load=1)
    c.clock = lambda: now[0]
    chooser = c.session()
    assert settle(chooser, alpha=0.9) >= 6
    c.observe_propose(1, 6, 2.4, timed_out=True)  # no answer within 2.4 s: 0.4 s a step
    assert chooser.choose(8) == 0
    now[0] += 20  # one half-life: 0.2 s a step, still more than a step can gain
    assert chooser.choose(8) == 0
    now[0] += 100  # six half-lives: 6 ms a step, below the 14 ms measured
    assert chooser.choose(8) >= 6
    # a draft that timed out before ever answering: its timeout is its only known cost
    fresh = AdaptiveK(clock=lambda: now[0])
    for rows in range(1, 10):
        fresh.observe_verify(1, rows, 0.17 + 0.0005 * rows)
    fresh.observe_propose(1, 4, 1.0, timed_out=True)
    assert fresh.session().choose(8) == 0


def simulate(verify_base: float, per_row: float, draft_step: float, alpha: float) -> int:
    """A fresh controller whose one session's rounds are measured as they run (verify
    verify_base + per_row * rows, draft_step per proposal); the most common K of the last 40
    of 120 rounds."""
    c = AdaptiveK()

    def measure(k: int) -> None:
        c.observe_verify(1, k + 1, verify_base + per_row * (k + 1))
        if k:
            c.observe_propose(1, k, k * draft_step)

    return settle(c.session(), alpha, rounds=120, last=40, measure=measure)


def test_a_fresh_controller_climbs_where_rows_are_cheap_and_not_where_they_are_dear():
    # AVX-512-like: a verify row nearly free, a draft step 8% of a pass -> deep K
    assert simulate(0.17, 0.0005, 0.014, alpha=0.8) >= 6
    # AVX2-like: a verify row costs 0.6 of a 1-row pass, a draft step a quarter -> K 0 or 1
    # (starting at k_max, it priced K = 0 at a 9-row pass and stayed at 8)
    assert simulate(0.15, 0.24, 0.1, alpha=0.6) <= 1


def test_a_draft_behind_speculates_only_where_the_rest_of_the_request_repays_its_catch_up():
    """A session back from K = 0 rounds (or never opened) must first prefill what its draft
    missed: K > 0 only where the remaining tokens at the better rate save more than that."""
    c = controller(0.17, 0.0005, 0.014, load=1)
    chooser = c.session()
    assert settle(chooser, alpha=0.9) >= 6
    c.observe_prefill(100, 2.0)  # 20 ms a token: 40 tokens behind cost 0.8 s
    assert chooser.choose(8, behind=0, remaining=5) >= 4  # in step: nothing to repay
    assert chooser.choose(8, behind=40, remaining=5) == 0  # 5 tokens save ~0.5 s
    assert chooser.choose(8, behind=40, remaining=100) >= 6  # 100 tokens save ~10 s
    assert chooser.choose(8, behind=40) >= 6  # (remaining unknown: not weighed)
    # a prompt of 2,000 tokens for 8 new ones: the draft is not worth opening
    assert chooser.defers_draft(8, prompt=2000, remaining=8)
    assert not chooser.defers_draft(8, prompt=50, remaining=128)


def test_a_propose_that_caught_up_teaches_the_prefill_cost_not_the_step_cost():
    c = controller(0.17, 0.0005, 0.014, load=1)
    step = c.draft_step(1)
    assert c.catch_up_s(40, 1) == pytest.approx(40 * step / 4)  # before any prefill: a prior
    c.observe_propose(1, 2, 2 * step + 27 * 0.025, catch_up=27)  # 27 tokens caught up first
    assert c.draft_step(1) == pytest.approx(step)
    assert c.catch_up_s(40, 1) == pytest.approx(40 * 0.025)
    c.observe_prefill(100, 1.0)  # an open: 10 ms a token, smoothed in
    assert 0.010 < c.prefill < 0.025
