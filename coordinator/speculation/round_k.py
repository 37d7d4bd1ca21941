"""One K for every session of a lockstep round, chosen from measured rounds.

Under lockstep several generations move in rounds: one batched Propose, one batched Verify.
Every session waits for the round's longest Propose and for a verify pass over everyone's
rows, so what a session's K costs falls on all of them; and what a round really costs at a
load (padding, gRPC, the services taking turns on shared cores) is what the per-session
cost model (adaptive.py) has to predict from per-call curves, and at load it can keep
proposing where target-only rounds are faster (figures:
docs/benchmarks.md#figures-behind-the-coordinators-rules).

RoundK measures instead of predicting: per load (sessions per verify, adaptive.session_bucket)
and K, the tokens the rounds produced per second of the services' compute. The next round
takes the best K measured at its load; every EXPLORE rounds it tries a neighbour of the
best (K-1, K+1 or 0, the least measured), and after an exploration that did not win it waits
twice as long before the next (up to MAX_EXPLORE rounds): each round at K > 0 after rounds
at K = 0 first catches the draft up, so exploring costs more than its own round. While a
neighbour of the best is not measured at this load yet it tries it after SURVEY rounds
instead: a request at load may last fewer rounds than walking from START_K to K = 0 one
step per EXPLORE rounds takes. Each load keeps its own schedule, and rounds
no session took (lone sessions on their own model) count for nothing.

A round's tokens are noisy (each session keeps 1 to K+1 of them), its cost much less so.
Given `expected` (new tokens per session in a round at K, from the acceptance measured per
position across all rounds: adaptive.AdaptiveK), a K's rate is its session-rounds times
that over its seconds, so one lucky exploration no longer moves K; without it, the tokens
the rounds recorded.

Round boundaries come from the calls themselves: a round ends at the first call after its
Verify (the tokens its sessions record arrive in between), so a decision reaches the round
after next; each round is tallied under the K its sessions took (take()). Pure arithmetic,
no transport.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

EXPLORE = 8  # rounds between explorations, at first
MAX_EXPLORE = 64
SURVEY = 2  # rounds before trying a neighbour of the best not measured at this load yet
START_K = 2  # a load not measured yet starts here (or lower: the nearest measured load's best)
LOADED_BUCKET = 2  # adaptive.session_bucket(2): loads of two sessions and more


@dataclass
class _Tally:
    weight: float = 0.0  # rounds
    sessions: float = 0.0  # session-rounds
    tokens: float = 0.0
    seconds: float = 0.0

    def add(self, sessions: int, tokens: float, seconds: float, decay: float) -> None:
        self.weight = decay * self.weight + 1
        self.sessions = decay * self.sessions + sessions
        self.tokens = decay * self.tokens + tokens
        self.seconds = decay * self.seconds + seconds

    @property
    def rate(self) -> float:
        """Tokens per second, as recorded."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Schedule:
    """When a load explores next: in `due` rounds, then every `every`."""
    due: int = EXPLORE
    every: int = EXPLORE


class RoundK:
    def __init__(self, k_max: int = 8, decay: float = 0.9,
                 expected: Callable[[int], float] | None = None):
        """expected(K): new tokens per session of a round at K (see the module docstring)."""
        self.k_max, self.decay, self.expected = k_max, decay, expected
        self.tallies: dict[tuple[int, int], _Tally] = {}  # (load bucket, K) -> rounds
        self.k = START_K  # what the next rounds take
        self.bucket: int | None = None
        self._taken: int | None = None  # the K the coming round's sessions took
        self._round_k = START_K  # the K of the round being tallied
        self._measures = self._taken_measures = True  # every session of it could propose
        self._cost, self._tokens, self._verified, self._open = 0.0, 0, False, False
        self._sessions = 0  # sessions that recorded the round being tallied
        self._schedules: dict[int, _Schedule] = {}  # load bucket -> its explorations
        self._exploring: tuple[int, int] | None = None  # (K tried, closes since)
        self._taken_by_any = False  # some session of the round being tallied took its K

    # ---- what the coordinator sees
    def take(self, measures: bool = True) -> int:
        """The K of a session's next round (the first taker labels the round). measures=
        False: this session will not propose whatever K it takes (its draft is not ready),
        so the round is not tallied: its rate would be target-only's under K's name."""
        if self._taken is None:
            self._taken = self.k
        self._taken_measures = self._taken_measures and measures
        return self.k

    def on_propose(self, seconds: float) -> None:
        self._call(seconds)

    def on_verify(self, bucket: int, seconds: float) -> None:
        self._call(seconds)
        self._verified, self.bucket = True, bucket

    def _call(self, seconds: float) -> None:
        if self._verified:
            self._close()
        if not self._open:  # the round's first call: its sessions have taken their K
            self._open, self._round_k = True, self.k if self._taken is None else self._taken
            self._taken_by_any = self._taken is not None
            self._measures, self._taken, self._taken_measures = self._taken_measures, None, True
        self._cost += seconds

    def record(self, tokens: int) -> None:
        """A session of the round ended it with `tokens` new tokens."""
        self._tokens += tokens
        self._sessions += 1

    # ---- the decision
    def _close(self) -> None:
        taken = self._taken_by_any  # else lone sessions chose their own K: nothing to learn
        fresh = not self._measured(self.bucket)  # the first round at this load
        if taken and self._tokens and self._cost > 0 and self._measures:
            key = (self.bucket, self._round_k)
            self.tallies.setdefault(key, _Tally()).add(self._sessions, self._tokens, self._cost,
                                                       self.decay)
        self._cost, self._tokens, self._verified, self._open = 0.0, 0, False, False
        self._sessions = 0
        if taken:
            self.k = self._start() if fresh else self._next()

    def _measured(self, bucket: int) -> dict[int, _Tally]:
        return {k: t for (b, k), t in self.tallies.items() if b == bucket}

    def _next(self) -> int:
        measured = self._measured(self.bucket)
        best = self._best(measured)
        schedule = self._schedules.setdefault(self.bucket, _Schedule())
        if self._exploring is not None:
            explored, closes = self._exploring
            if self._round_k == explored or closes >= 3:  # its round is in (or never came)
                won = best == explored
                schedule.every = EXPLORE if won else min(MAX_EXPLORE, 2 * schedule.every)
                schedule.due, self._exploring = schedule.every, None
            else:
                self._exploring = (explored, closes + 1)
                return best
        # K = 0 is always a neighbour: with no Propose call at all a round costs a step less
        # than K = 1's, so a best K that beats K = 1 may still lose to K = 0
        neighbours = [k for k in dict.fromkeys((0, best - 1, best + 1))
                      if 0 <= k <= self.k_max and k != best]
        if any(k not in measured for k in neighbours):
            schedule.due = min(schedule.due, SURVEY)
        schedule.due -= 1
        if schedule.due > 0 or not neighbours:  # (none: k_max = 0)
            return best
        explored = min(neighbours, key=lambda k: measured[k].weight if k in measured else 0.0)
        self._exploring = (explored, 0)
        return explored

    def _start(self) -> int:
        """A new load (its first round, taken at the last load's K, is just in): the nearest
        other measured load's best, at most START_K. (Lone sessions' rounds are no guide:
        the deep K they take costs whole rounds at load.)"""
        loaded = {b for b, _ in self.tallies if b >= LOADED_BUCKET and b != self.bucket}
        if not loaded:
            return START_K
        near = min(loaded, key=lambda b: abs(b - self.bucket))
        return min(START_K, self._best(self._measured(near)))

    def rate(self, k: int, tally: _Tally) -> float:
        """Tokens per second of the services' compute of rounds at K (expected or recorded)."""
        if self.expected is None or tally.seconds <= 0:
            return tally.rate
        return tally.sessions * self.expected(k) / tally.seconds

    def _best(self, measured: dict[int, _Tally]) -> int:
        return max(measured, key=lambda k: self.rate(k, measured[k]))
