"""Adaptive K: each round, the number of proposals that maximizes expected tokens per second.

A round in which a session proposes K tokens yields

    E(K) = 1 + sum_{j=1..K} prod_{i=1..j} alpha_i

tokens (the accepted proposals and the target's own token), alpha_i being the session's
acceptance rate at position i given that positions 1..i-1 were accepted. With n sessions
sharing each batched call, the round costs

    cost(K) = K * D(n) + T(n, n * (K + 1))

D(n): the draft's cost per proposal step for a batch of n sessions; T(n, rows): the
target's verify pass over n sessions and `rows` rows. Both are learnt online from the
services' own compute times, per batch-size bucket (CostCurve, VerifyCost). The load term
is n: as more sessions share a verify pass, every extra row costs more compute and
speculation pays less, down to K = 0. The controller assumes every session in the batch acts
like this one (each picks K for its own acceptance), which is exact when they are alike and
a fair estimate when not. A session at K = 0 does not probe: every round at K = 0 leaves the
draft session behind, and catching up many sessions at once in one Propose (a prefill of
their missed tokens) timed out under load and cost more than the probe could find; the
decision moves with the load instead (costs are remembered per load) and a new session
starts from the coordinator's acceptance.

A draft that is behind (a session back from K = 0 rounds, or a deferred one never opened)
must first prefill the tokens it missed: its next Propose costs that catch-up too. The
catch-up is paid once and repaid by the rest of the request, so a session behind leaves K = 0
only where the remaining tokens at the better rate save more than the catch-up costs (a
catch-up can cost more than the gain it is for; figures:
docs/benchmarks.md#figures-behind-the-coordinators-rules). The draft's prefill cost per token
is learnt from its opens (and from Proposes that caught up), apart from its cost per step.

A Propose that times out costs at least its timeout, but that cost is kept apart and fades
(half-life TIMEOUT_HALF_LIFE_S): nothing re-measures the draft while K = 0, so a timeout
kept in the cost curves would stop speculation at that load for good after one slow spell
of the draft; fading, it stops speculation for a minute or two and then lets it try again.

Under lockstep, above SHARED_ROUNDS_LOAD sessions per verify, the model above is not used:
every session of a round takes the round's K, the one whose rounds measured the most
tokens per second at this load (round_k.RoundK).

Pure arithmetic on numbers the coordinator already has: no transport, no tensors.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

from ..upstream.costs import CostEvent, PrefillCall, ProposeCall, VerifyCall
from .round_k import RoundK

MIN_OBSERVATIONS = 3  # calls of each service measured before the model is trusted
TIMEOUT_HALF_LIFE_S = 20.0  # how fast the cost of a timed-out Propose fades


class CostCurve:
    """A cost (seconds) as a function of a size x (rows, sessions), learnt per size bucket.

    Bucket b holds sizes in [2**b, 2**(b+1)), with exponentially weighted means of x and y.
    A bucket forgets only through its own observations, so what a high load cost is
    remembered through a quiet spell (a fit over recent calls alone forgets it, and the
    first rounds back at load speculate deep).
    Between buckets: linear interpolation; above the largest seen: the steeper of its last
    slope and the prior (cost doubling every prior_rows); below the smallest: its cost.
    Never decreasing in x."""

    def __init__(self, decay: float = 0.8, prior_rows: float = 16.0):
        self.decay, self.prior_rows = decay, prior_rows
        self.n = 0
        self.max_x = 0.0  # the largest size measured
        self._buckets: dict[int, tuple[float, float, float]] = {}  # b -> (weight, sum x, sum y)

    def observe(self, x: float, y: float) -> None:
        self.max_x = max(self.max_x, x)
        b = max(0, int(x).bit_length() - 1)
        w, sx, sy = self._buckets.get(b, (0.0, 0.0, 0.0))
        d = self.decay
        self._buckets[b] = (d * w + 1, d * sx + x, d * sy + y)
        self.n += 1

    def points(self) -> list[tuple[float, float]]:
        """(mean x, mean y) per bucket, by size, y made non-decreasing."""
        points, top = [], 0.0
        for _, (w, sx, sy) in sorted(self._buckets.items()):
            top = max(top, sy / w)
            points.append((sx / w, top))
        return points

    def __call__(self, x: float) -> float:
        points = self.points()
        x0, y0 = points[0]
        if x <= x0:
            return y0
        for (xa, ya), (xb, yb) in zip(points, points[1:], strict=False):
            if x <= xb:
                return ya + (yb - ya) * (x - xa) / (xb - xa)
        xl, yl = points[-1]
        slope = yl / (xl + self.prior_rows)
        if len(points) > 1:
            xa, ya = points[-2]
            slope = max(slope, (yl - ya) / (xl - xa))
        return yl + slope * (x - xl)

    @property
    def ready(self) -> bool:
        return self.n >= MIN_OBSERVATIONS


@dataclass
class Acceptance:
    """Per-position acceptance counts, exponentially decayed every round (so old rounds fade
    even at positions no longer proposed). Position j (0 = the first proposal) is `reached`
    in a round that proposed past j with positions < j accepted."""
    decay: float = 0.9
    reached: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)

    def record(self, proposed: int, accepted: int) -> None:
        """A round verified `proposed` proposals and kept the first `accepted`."""
        while len(self.reached) < proposed:
            self.reached.append(0.0)
            self.accepted.append(0.0)
        for j in range(len(self.reached)):
            reached = j < proposed and j <= accepted
            self.reached[j] = self.decay * self.reached[j] + reached
            self.accepted[j] = self.decay * self.accepted[j] + (j < accepted)

    def pooled(self, prior: float, weight: float) -> float:
        """The acceptance rate over every position, shrunk towards `prior` (weight rounds)."""
        return (sum(self.accepted) + weight * prior) / (sum(self.reached) + weight)

    def rates(self, n: int, prior: float, weight: float) -> list[float]:
        """Acceptance rates at positions 0..n-1, each shrunk with `weight` rounds towards the
        pooled rate: a position rarely proposed (beyond the recent K) takes the pooled rate
        rather than a few stale rounds, which would otherwise hold K below it for good."""
        pooled = self.pooled(prior, weight)
        return [(self.accepted[j] + weight * pooled) / (self.reached[j] + weight)
                if j < len(self.reached) else pooled for j in range(n)]


BASE_ALPHA = 0.6  # acceptance assumed before anything was measured
SHARED_ROUNDS_LOAD = 1.5  # sessions per verify above which lockstep rounds share one K


def session_bucket(sessions: float) -> int:
    """Buckets of sessions a half power of two wide (1, 1.4, 2, 2.8, 4, 5.7, 8, 11, 16, ...):
    per-session costs can be steep enough that a power of two per bucket misprices."""
    return round(2 * math.log2(max(1.0, sessions)))


class VerifyCost:
    """T(sessions, rows): a CostCurve over rows per bucket of sessions. A batched verify
    costs per session as well as per row (each session's cache is stacked into the batch and
    attended over), so 16 sessions of 1 row cost far more than 1 session of 16 rows, and
    one curve over rows alone mispredicts loads it has not seen. A bucket of sessions
    not measured yet borrows the nearest measured one, scaled by the ratio of sessions
    (pessimistic where per-session costs are small, as on a GPU, until measured)."""

    def __init__(self, decay: float = 0.8):
        self.decay = decay
        self._curves: dict[int, CostCurve] = {}
        self._sessions: dict[int, list[float]] = {}  # bucket -> [count, sum of sessions]

    def observe(self, sessions: int, rows: int, seconds: float) -> None:
        b = session_bucket(sessions)
        self._curves.setdefault(b, CostCurve(self.decay)).observe(rows, seconds)
        count = self._sessions.setdefault(b, [0.0, 0.0])
        count[0] += 1
        count[1] += sessions

    @property
    def ready(self) -> bool:
        return any(c.ready for c in self._curves.values())

    def measured_k(self, sessions: float) -> int | None:
        """The largest K measured at about this many sessions (None: this load is new)."""
        b = session_bucket(sessions)
        curve = self._curves.get(b)
        if curve is None or not curve.ready:
            return None
        count, total = self._sessions[b]
        return max(0, round(curve.max_x / (total / count)) - 1)

    def __call__(self, sessions: float, rows: float) -> float:
        b = session_bucket(sessions)
        curve = self._curves.get(b)
        if curve is not None and curve.ready:
            return curve(rows)
        known = min((k for k, c in self._curves.items() if c.ready), key=lambda k: abs(k - b))
        count, total = self._sessions[known]
        scale = sessions / (total / count)
        return self._curves[known](rows / scale) * scale


class AdaptiveK:
    """One coordinator's cost model and population acceptance (shared by its sessions);
    with lockstep, also the measured rounds that pick one K per round at load (RoundK)."""

    def __init__(self, clock=time.monotonic, lockstep: bool = False, k_max: int = 8):
        self.verify = VerifyCost()  # seconds of one Verify call ~ its sessions and rows
        self.draft = CostCurve()  # seconds per proposal step of one Propose ~ its sessions
        self.prefill: float | None = None  # seconds per token of a draft prefill (smoothed)
        self.load = 1.0  # sessions per Verify call, smoothed
        self.population = Acceptance(decay=0.99)
        self.chosen: Counter[int] = Counter()  # rounds by the K chosen (metrics)
        self.clock = clock
        # session bucket -> (seconds per step of a timed-out Propose, when): see the docstring
        self._timeouts: dict[int, tuple[float, float]] = {}
        self.rounds = RoundK(k_max, expected=self.expected_tokens) if lockstep else None

    def expected_tokens(self, k: int) -> float:
        """New tokens a session's round at K yields, at every session's acceptance per
        position (the population's, shrunk towards the pooled rate where rarely reached)."""
        prior = self.population.pooled(BASE_ALPHA, 2.0)
        survive, expected = 1.0, 1.0
        for alpha in self.population.rates(k, prior, 4.0):
            survive *= alpha
            expected += survive
        return expected

    def observe(self, event: CostEvent) -> None:
        """What an upstream call cost (the clients' on_cost)."""
        match event:
            case VerifyCall(sessions, rows, seconds):
                self.observe_verify(sessions, rows, seconds)
            case ProposeCall(sessions, steps, seconds, timed_out, catch_up):
                self.observe_propose(sessions, steps, seconds, timed_out, catch_up)
            case PrefillCall(tokens, seconds):
                self.observe_prefill(tokens, seconds)

    def observe_verify(self, sessions: int, rows: int, seconds: float) -> None:
        """A Verify call of `sessions` items verified `rows` rows (proposals + 1 each)."""
        if rows:
            self.verify.observe(sessions, rows, seconds)
            self.load = 0.8 * self.load + 0.2 * sessions
            if self.rounds is not None:
                self.rounds.on_verify(session_bucket(sessions), seconds)

    def observe_propose(self, sessions: int, steps: int, seconds: float,
                        timed_out: bool = False, catch_up: int = 0) -> None:
        """A Propose call for `sessions` items that asked for up to `steps` proposals;
        timed_out: it had no answer within `seconds`. catch_up: the most tokens an item
        appended beyond the one a round leaves (a prefill before its steps)."""
        if not (sessions and steps):
            return
        if self.rounds is not None:
            self.rounds.on_propose(seconds)
        if timed_out:
            b = session_bucket(sessions)
            self._timeouts[b] = (max(seconds / steps, self._penalty(b)), self.clock())
        elif catch_up > 0 and self.draft.ready:  # the rest of the steps' cost: the prefill
            prefill = seconds - steps * self.draft(sessions)
            if prefill > 0:
                self.observe_prefill(catch_up, prefill)
        else:
            self.draft.observe(sessions, seconds / steps)

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        """A draft prefill of `tokens` tokens (an OpenSession call, all its prompts) took
        `seconds` of compute."""
        if tokens > 0:
            per_token = seconds / tokens
            self.prefill = (per_token if self.prefill is None
                            else 0.8 * self.prefill + 0.2 * per_token)

    def catch_up_s(self, tokens: int, sessions: float) -> float:
        """Seconds for the draft to prefill `tokens` it missed: as measured, or (before any
        prefill was) a quarter of a step per token, about what a CPU's prefill costs."""
        if tokens <= 0:
            return 0.0
        if self.prefill is not None:
            return tokens * self.prefill
        step = self.draft_step(sessions)
        return 0.0 if step is None else tokens * step / 4

    def _penalty(self, bucket: int) -> float:
        """What the timeouts at this load still add to a step's cost (fading)."""
        cost, when = self._timeouts.get(bucket, (0.0, 0.0))
        return cost * 0.5 ** ((self.clock() - when) / TIMEOUT_HALF_LIFE_S) if cost else 0.0

    def draft_step(self, sessions: float) -> float | None:
        """Seconds per proposal step at this load: the measured cost, or the fading cost of
        recent timeouts if higher; None when neither is known."""
        measured = self.draft(sessions) if self.draft.ready else None
        penalty = self._penalty(session_bucket(sessions))
        if measured is None:
            return penalty or None
        return max(measured, penalty)

    def session(self) -> SessionK:
        return SessionK(self)


class SessionK:
    """One generation's K: its own acceptance over the population's (as the prior)."""

    def __init__(self, controller: AdaptiveK, weight: float = 4.0):
        self.controller, self.weight = controller, weight
        self.acceptance = Acceptance()

    def rates(self, n: int) -> list[float]:
        """Acceptance at positions 0..n-1: this session's, shrunk towards the population's
        pooled rate (what a new session starts from), plus one standard error of the
        session's pooled rate. The optimism matters: rounds at a lower K measure less, so
        an estimate that dipped by chance would otherwise hold K down (a session at K = 0
        measures only its probes)."""
        population = self.controller.population.pooled(BASE_ALPHA, 2.0)
        a = self.acceptance
        pooled = a.pooled(population, self.weight)
        error = (pooled * (1 - pooled) / (sum(a.reached) + self.weight)) ** 0.5
        return [min(1.0, r + error) for r in a.rates(n, population, self.weight)]

    def shares_rounds(self, sessions: int) -> bool:
        """Whether this generation's rounds take the round's K (RoundK): under lockstep, with
        more than SHARED_ROUNDS_LOAD sessions per verify (smoothed) or generations running
        now (`sessions`: a burst arriving, before any verify measured it)."""
        c = self.controller
        return c.rounds is not None and max(c.load, sessions) > SHARED_ROUNDS_LOAD

    def defers_draft(self, k_max: int, sessions: int = 1, prompt: int = 0,
                     remaining: int | None = None) -> bool:
        """Whether this generation opens its draft session only once a round asks for
        proposals: its rounds take the round's K (which may stay 0 at load), or the cost
        model already picks K = 0 for it (speculation does not pay at this load, e.g. where
        a verify row costs nearly a whole target step, or not enough to repay the prefill
        of a `prompt`-token prompt within `remaining` tokens): a draft prefill of the prompt
        would then cost the first token and the services' time for nothing."""
        return self.shares_rounds(sessions) or self._best(k_max, prompt, remaining) == 0

    def choose(self, k_max: int, draft_ready: bool = True, sessions: int = 1,
               behind: int = 0, remaining: int | None = None) -> int:
        """The K in [0, k_max] with the most expected tokens per second of round: at load
        under lockstep, the round's K (RoundK); otherwise from this session's acceptance
        and the cost model. draft_ready=False: this session cannot propose this round (its
        draft session is opening or lost), so the round does not measure its K. sessions:
        generations running now. behind: tokens the draft must prefill before it can
        propose (DraftLeg.behind); remaining: the most tokens the request still generates
        (None: unknown, the catch-up is not weighed)."""
        c = self.controller
        if self.shares_rounds(sessions) and k_max > 0:
            k = min(k_max, c.rounds.take(measures=draft_ready))
        else:
            k = self._best(k_max, behind, remaining)
        c.chosen[k] += 1
        return k

    def _best(self, k_max: int, behind: int = 0, remaining: int | None = None) -> int:
        c = self.controller
        if k_max <= 0:
            return k_max
        n = max(1.0, c.load)
        draft_step = c.draft_step(n)
        if not c.verify.ready or draft_step is None:
            # nothing measured yet: K = 1, then one step more per round while it pays. (Not
            # k_max: below the rows it measured the verify curve is flat, so a model that
            # started deep would price K = 0 at a deep verify's cost and stay deep.)
            return min(k_max, 1)
        # Verify costs can rise faster than linearly in rows at load, so K grows at most one
        # past the largest K measured at this load, and to 1 at a load not measured yet:
        # each step's cost is seen before the next is taken.
        measured = c.verify.measured_k(n)
        k_max = min(k_max, 1 if measured is None else measured + 1)
        rate_0 = 1.0 / c.verify(n, n)
        best_k, best_rate = 0, rate_0
        survive, expected = 1.0, 1.0
        for k, alpha in enumerate(self.rates(k_max), start=1):
            survive *= alpha
            expected += survive
            rate = expected / (k * draft_step + c.verify(n, n * (k + 1)))
            if rate > best_rate:
                best_k, best_rate = k, rate
        if best_k and behind > 0 and remaining is not None:
            # the catch-up must be repaid by the rest of the request (see the docstring)
            saved = remaining / rate_0 - remaining / best_rate
            if saved <= c.catch_up_s(behind, n):
                return 0
        return best_k

    def record(self, proposed: int, accepted: int) -> None:
        if self.controller.rounds is not None:
            self.controller.rounds.record(accepted + 1)
        if proposed:
            self.acceptance.record(proposed, accepted)
            self.controller.population.record(proposed, accepted)
