"""The draft leg's state (draft_leg.DraftLeg): where its session is in its life, and where
the session stands against the generation's history. Pure data, no calls."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field


class DraftState(enum.Enum):
    CLOSED = "closed"  # no session: not opened yet, or closed
    DEFERRED = "deferred"  # the first session opens once a round asks for proposals
    OPENING = "opening"  # a session opens in the background; rounds run target-only
    READY = "ready"  # open and in step: the next Propose proposes
    UNSURE = "unsure"  # a Propose timed out: kept, re-synchronised before it proposes again
    LOST = "lost"  # no session (it failed, or left a draining replica): re-opens after a backoff


@dataclass
class DraftPosition:
    """Where the draft session stands: the tokens it holds, where its next Propose first
    rolls back to, and the final tokens it has not seen yet (appended by that Propose)."""
    held: int = 0  # final tokens + its last proposals
    keep: int | None = None  # None: nothing to roll back
    append: list[int] = field(default_factory=list)

    @property
    def proposals_end(self) -> int:
        """Where the last round's proposals end in the session."""
        return self.held if self.keep is None else self.keep

    @property
    def behind(self) -> int:
        """Final tokens to prefill before proposing, beyond the one every round leaves."""
        return max(0, len(self.append) - 1)

    def proposed(self, held: int) -> None:
        """A Propose ran: the session holds `held` tokens and has seen every final one."""
        self.held, self.keep, self.append = held, None, []

    def settle(self, end: int, proposed: int, accepted: int, last: int) -> None:
        """A round verified `proposed` proposals ending at `end` and kept the first
        `accepted`: the rest roll back; the target's own token `last` comes next."""
        self.keep = end - proposed + accepted
        self.append = [last]

    def copy(self) -> DraftPosition:
        return DraftPosition(self.held, self.keep, list(self.append))


@dataclass(frozen=True)
class TimedOut:
    """A Propose that timed out (state UNSURE), kept to be sent again unchanged."""
    at: DraftPosition  # the position it was sent from
    k: int
    length: int  # the history length it brings the session to


@dataclass(frozen=True)
class Opening:
    """A session opening in the background (state OPENING)."""
    task: asyncio.Task  # -> (session id, history length it holds, the open's reply)
    session_id: str
    client: object  # the replica's ServiceClient
    first: bool  # the deferred first session (not a re-open after a failure)
