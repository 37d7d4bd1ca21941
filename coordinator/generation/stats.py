"""Per-request statistics of a generation (streamed last, logged once, counted in metrics)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class Finish(enum.Enum):
    LENGTH = "length"
    STOP = "stop"
    EOS = "eos"


@dataclass
class Stats:
    session_id: str
    prompt_tokens: int
    finish: Finish | None = None
    generated_tokens: int = 0
    rounds: int = 0
    time_to_first_token_s: float = 0.0
    total_time_s: float = 0.0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    forward_time_s: float = 0.0  # the model calls' own time (no queueing), both services
    wire_bytes: int = 0
    proposed_at: list[int] = field(default_factory=list)  # [i]: rounds proposing position i
    accepted_at: list[int] = field(default_factory=list)  # [i]: rounds accepting it (same len)
    verify_batch_sessions: int = 0  # summed over rounds: sessions in each verify pass
    seed: int = 0
    # rounds that wanted proposals but ran without the draft, by reason ("timeout", …), in
    # the order the reasons first occurred
    fallback_reasons: dict[str, int] = field(default_factory=dict)
    draft_reopens: int = 0  # draft sessions re-opened from the token history after a fault
    target_reopens: int = 0  # target sessions re-opened from the token history after a fault
    ahead_used: int = 0  # --draft-ahead blocks that became the next round's proposals
    ahead_discarded: int = 0  # --draft-ahead blocks rolled back (a proposal was rejected)
    started: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def mean_accepted_length(self) -> float:
        return 1 + self.accepted / self.rounds if self.rounds else 0.0

    @property
    def proposed(self) -> int:
        return sum(self.proposed_at)

    @property
    def accepted(self) -> int:
        return sum(self.accepted_at)

    @property
    def rounds_with_proposals(self) -> int:
        return self.proposed_at[0] if self.proposed_at else 0

    def record_round(self, proposed: int, accepted: int) -> None:
        """One round: draft positions 0..proposed-1 proposed, 0..accepted-1 accepted."""
        self.rounds += 1
        grow = proposed - len(self.proposed_at)
        if grow > 0:
            self.proposed_at.extend([0] * grow)
            self.accepted_at.extend([0] * grow)
        for i in range(proposed):
            self.proposed_at[i] += 1
            self.accepted_at[i] += i < accepted

    def record_fallback(self, reason: str) -> None:
        """A round that should have had proposals runs without the draft."""
        self.fallback_reasons[reason] = self.fallback_reasons.get(reason, 0) + 1

    @property
    def draft_fallback_rounds(self) -> int:
        return sum(self.fallback_reasons.values())

    @property
    def draft_fallback_reason(self) -> str:
        """Why the first fallback round ran without the draft ("" if none did)."""
        return next(iter(self.fallback_reasons), "")

    @property
    def mean_verify_batch(self) -> float:
        return self.verify_batch_sessions / self.rounds if self.rounds else 0.0

    @property
    def coordinator_time_s(self) -> float:
        return max(0.0, self.total_time_s - self.draft_time_s - self.verify_time_s)

    def summary(self) -> dict:
        return {
            "finish_reason": self.finish.value if self.finish else None,
            "prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
            "rounds": self.rounds, "proposed_draft_tokens": self.proposed,
            "accepted_draft_tokens": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "mean_accepted_length": round(self.mean_accepted_length, 4),
            "ttft_s": round(self.time_to_first_token_s, 4),
            "total_s": round(self.total_time_s, 4), "draft_s": round(self.draft_time_s, 4),
            "verify_s": round(self.verify_time_s, 4),
            "coordinator_s": round(self.coordinator_time_s, 4),
            "wire_bytes": self.wire_bytes, "seed": self.seed,
            "mean_verify_batch": round(self.mean_verify_batch, 3),
            "draft_fallback_rounds": self.draft_fallback_rounds,
            "draft_fallback_reason": self.draft_fallback_reason,
            "draft_reopens": self.draft_reopens, "target_reopens": self.target_reopens,
            "ahead_used": self.ahead_used, "ahead_discarded": self.ahead_discarded,
        }
