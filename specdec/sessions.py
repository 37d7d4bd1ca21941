"""A plain session store keyed by id, with a size limit and idle expiry."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted

# Ids of closed sessions remembered (most recent), so a delayed or retried OpenSession that
# arrives after its CloseSession cannot bring the session back (and leak it).
CLOSED_IDS_KEPT = 65536


@dataclass
class Session:
    """One generation's state on a model service.

    tokens: every token the session holds. cache: its slot in the engine's KV cache pool
    (specdec.kv_cache), holding tokens[:cache_len]; tokens[cache_len:] are pending and fed
    on the next forward pass.
    last_call / last_result: the last state-changing call and its answer, so that a retry
    of the same call returns the same answer instead of applying it twice.
    sampling / generator: how tokens are chosen, and the session's own seeded generator
    (None when greedy). draft_rows: the draft's warped distributions of its last proposal
    [K, V]. recovery: the target's pending recovered-token draw (target_engine.Recovery).
    """

    id: str
    tokens: list[int]
    cache: Any
    cache_len: int = 0
    sampling: Any = None
    generator: Any = None
    draft_rows: Any = None
    recovery: Any = None
    reserved_tokens: int = 0
    last_call: tuple | None = None
    last_result: Any = None
    last_used: float = field(default_factory=time.monotonic)


class SessionStore:
    def __init__(self, max_sessions: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 max_reserved_tokens: int | None = None,
                 on_drop: Callable[[Session], None] | None = None):
        """on_drop: called with each session closed or expired (frees its cache slot)."""
        self.on_drop = on_drop
        self.max_sessions = max_sessions
        self.max_reserved_tokens = max_reserved_tokens
        self.reserved_tokens = 0
        self.ttl_s = ttl_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        """The ids of the sessions held now."""
        return iter(list(self._sessions))

    def peek(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def check_capacity(self) -> None:
        if len(self._sessions) >= self.max_sessions:
            raise ResourceExhausted(
                f"{len(self._sessions)} sessions are live, the limit (--max-sessions) is "
                f"{self.max_sessions}; retry later")

    def add(self, session: Session) -> None:
        if session.id in self._sessions:
            raise AlreadyExists(f"session {session.id} already exists")
        if session.id in self._closed:
            raise FailedPrecondition(f"session {session.id} was closed; open it under a new id")
        self.check_capacity()
        budget = self.max_reserved_tokens
        if budget is not None and self.reserved_tokens + session.reserved_tokens > budget:
            raise ResourceExhausted(
                f"the session would reserve {session.reserved_tokens} tokens of KV cache; "
                f"{self.reserved_tokens} of {budget} (--max-cache-mb) are reserved by "
                f"{len(self._sessions)} live sessions; retry later or ask for fewer tokens")
        session.last_used = self._clock()
        self._sessions[session.id] = session
        self.reserved_tokens += session.reserved_tokens

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"session {session_id!r} not found (never opened, closed, or expired "
                           f"after {self.ttl_s:g}s idle)")
        session.last_used = self._clock()
        return session

    def pop(self, session_id: str) -> Session:
        session = self.get(session_id)
        del self._sessions[session_id]
        self.reserved_tokens -= session.reserved_tokens
        if self.on_drop is not None:
            self.on_drop(session)
        self.remember_closed(session_id)
        return session

    def remember_closed(self, session_id: str) -> None:
        """Refuse this id from now on (also for ids closed before they were ever opened)."""
        self._closed[session_id] = None
        self._closed.move_to_end(session_id)
        while len(self._closed) > CLOSED_IDS_KEPT:
            self._closed.popitem(last=False)

    def expire(self) -> list[str]:
        """Drop sessions idle for longer than ttl_s; returns their ids."""
        cutoff = self._clock() - self.ttl_s
        stale = [sid for sid, s in self._sessions.items() if s.last_used < cutoff]
        for sid in stale:
            session = self._sessions.pop(sid)
            self.reserved_tokens -= session.reserved_tokens
            if self.on_drop is not None:
                self.on_drop(session)
            self.remember_closed(sid)
        return stale
