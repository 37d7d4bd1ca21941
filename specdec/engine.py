"""Model engines: per-session KV caches, prefill, draft proposals and target verification.

Engines are synchronous and not thread-safe: each service runs all calls of its engine on
one worker thread. They raise specdec.errors on bad input and never import grpc.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog
import torch
from transformers import DynamicCache

from .acceptance import greedy_accept
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, OutOfRange, SpecdecError
from .models import LoadedModel
from .sessions import Session, SessionStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class VerifyItem:
    session_id: str
    position: int
    draft_token_ids: list[int]


@dataclass(frozen=True)
class VerifyOutcome:
    session_id: str
    num_accepted: int = 0
    next_token_id: int = 0
    position: int = 0
    error: SpecdecError | None = None


class Engine:
    """Sessions and their caches on one model; the operations both services share."""

    def __init__(self, lm: LoadedModel, max_sessions: int, session_ttl_s: float,
                 max_proposal_tokens: int):
        self.lm = lm
        self.sessions = SessionStore(max_sessions, session_ttl_s)
        self.max_proposal_tokens = max_proposal_tokens

    # ---- validation -------------------------------------------------------------------
    def _check_ids(self, ids: list[int], what: str) -> None:
        bad = [t for t in ids if t >= self.lm.vocab_size]
        if bad:
            raise InvalidArgument(f"{what}: token id {bad[0]} is outside the vocabulary "
                                  f"[0, {self.lm.vocab_size})")

    def _check_length(self, length: int) -> None:
        if length > self.lm.max_context_length:
            raise OutOfRange(f"the session would hold {length} tokens, more than the model's "
                             f"context of {self.lm.max_context_length}")

    def _session_at(self, session_id: str, position: int, call: tuple) -> tuple[Session, bool]:
        """The session, and whether `call` repeats its last call (a retry)."""
        s = self.sessions.get(session_id)
        if s.last_call == call:
            return s, True
        if position != len(s.tokens):
            raise FailedPrecondition(f"session {session_id} holds {len(s.tokens)} tokens but the "
                                     f"call expects position {position}")
        return s, False

    # ---- cache ops --------------------------------------------------------------------
    @torch.inference_mode()
    def _next_logits(self, s: Session, last: int) -> torch.Tensor:
        """Feed the pending tokens; return the logits of the last `last` positions [last, V]."""
        if s.cache_len >= len(s.tokens):  # nothing pending: re-feed the last token
            self._crop(s, len(s.tokens) - 1)
        ids = torch.tensor([s.tokens[s.cache_len:]], device=self.lm.device)
        out = self.lm.model(input_ids=ids, past_key_values=s.cache, use_cache=True,
                            logits_to_keep=last)
        s.cache_len = len(s.tokens)
        return out.logits[0, -last:].float()

    def _crop(self, s: Session, length: int) -> None:
        """Keep the first `length` tokens' cache entries."""
        if s.cache_len > length:
            s.cache.crop(length - s.cache_len)  # transformers 5: negative = tokens to drop
            s.cache_len = length

    def _truncate(self, s: Session, length: int) -> None:
        del s.tokens[length:]
        self._crop(s, length)

    @torch.inference_mode()
    def _prefill(self, s: Session) -> None:
        """Cache every prompt token but the last, which stays pending."""
        if len(s.tokens) > 1:
            ids = torch.tensor([s.tokens[:-1]], device=self.lm.device)
            self.lm.model(input_ids=ids, past_key_values=s.cache, use_cache=True, logits_to_keep=1)
            s.cache_len = len(s.tokens) - 1

    # ---- public operations ------------------------------------------------------------
    def open(self, session_id: str, prompt: list[int]) -> tuple[str, int]:
        """Create and prefill a session; returns (session_id, position)."""
        if not prompt:
            raise InvalidArgument("prompt_token_ids is empty; a session needs at least one token")
        self._check_ids(prompt, "prompt_token_ids")
        self._check_length(len(prompt))
        existing = self.sessions.peek(session_id) if session_id else None
        if existing is not None:
            if existing.last_call == ("open", tuple(prompt)):
                return existing.id, len(existing.tokens)
            raise AlreadyExists(f"session {session_id} already exists with another state")
        self.sessions.check_capacity()
        s = Session(session_id or uuid.uuid4().hex, list(prompt),
                    DynamicCache(config=self.lm.model.config))
        self._prefill(s)
        s.last_call = ("open", tuple(prompt))
        self.sessions.add(s)
        return s.id, len(s.tokens)

    def truncate(self, session_id: str, position: int, length: int) -> int:
        s, retry = self._session_at(session_id, position, ("truncate", position, length))
        if not retry:
            if not 1 <= length <= position:
                raise InvalidArgument(f"length {length} must be in [1, position={position}]")
            self._truncate(s, length)
            s.last_call = ("truncate", position, length)
        return len(s.tokens)

    def close(self, session_id: str) -> None:
        self.sessions.pop(session_id)

    def warmup(self, max_new: int = 9) -> None:
        """Run the shapes serving uses once, outside any session: first use of a shape is
        slow with some kernels (CPU bf16), and that must not land on a user's request."""
        n = max(2, min(16, self.lm.max_context_length - max_new - 1))
        s = Session("warmup", [0] * n, DynamicCache(config=self.lm.model.config))
        self._prefill(s)
        for extra in range(max_new):
            s.tokens.extend([0] * extra)
            self._next_logits(s, extra + 1)
            self._truncate(s, n)

    def expire(self) -> list[str]:
        return self.sessions.expire()

    def logits(self, session_id: str) -> torch.Tensor:
        """Next-token logits [V] of a session, leaving its tokens unchanged."""
        return self._next_logits(self.sessions.get(session_id), 1)[-1]

    def _guarded(self, s: Session, fn):
        """Run a state change; if it fails half-way, drop the session rather than keep a
        cache that no longer matches its tokens."""
        try:
            return fn()
        except Exception:
            self.sessions.pop(s.id)
            log.exception("session dropped after a failed model call", session_id=s.id)
            raise


class DraftEngine(Engine):
    def propose(self, session_id: str, position: int, truncate_to: int | None,
                append: list[int], k: int) -> tuple[list[int], int]:
        """Roll back to truncate_to, append tokens, propose k greedy tokens.

        Returns (proposals, new position)."""
        call = ("propose", position, truncate_to, tuple(append), k)
        s, retry = self._session_at(session_id, position, call)
        if retry:
            return s.last_result
        if not 1 <= k <= self.max_proposal_tokens:
            raise InvalidArgument(f"num_tokens {k} must be in [1, {self.max_proposal_tokens}]")
        keep = position if truncate_to is None else truncate_to
        if not 1 <= keep <= position:
            raise InvalidArgument(f"truncate_to {truncate_to} must be in [1, position={position}]")
        self._check_ids(append, "append_token_ids")
        self._check_length(keep + len(append) + k)

        def run() -> tuple[list[int], int]:
            self._truncate(s, keep)
            s.tokens.extend(append)
            proposals: list[int] = []
            for _ in range(k):
                token = int(self._next_logits(s, 1)[-1].argmax())
                proposals.append(token)
                s.tokens.append(token)
            return proposals, len(s.tokens)

        s.last_result = self._guarded(s, run)
        s.last_call = call
        return s.last_result


class TargetEngine(Engine):
    def __init__(self, lm: LoadedModel, max_sessions: int, session_ttl_s: float,
                 max_proposal_tokens: int, max_batch_items: int):
        super().__init__(lm, max_sessions, session_ttl_s, max_proposal_tokens)
        self.max_batch_items = max_batch_items

    def verify(self, items: list[VerifyItem]) -> tuple[list[VerifyOutcome], int]:
        """Verify each item; a failing item does not affect the others.

        Returns (outcomes in item order, forward passes run)."""
        if not items:
            raise InvalidArgument("Verify needs at least one item")
        if len(items) > self.max_batch_items:
            raise InvalidArgument(f"{len(items)} items exceed max_batch_items "
                                  f"{self.max_batch_items}")
        ids = [it.session_id for it in items]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("a session appears more than once in one Verify call")
        outcomes, passes = [], 0
        for item in items:
            try:
                outcome, ran = self._verify_one(item)
                passes += ran
            except SpecdecError as e:
                outcome = VerifyOutcome(item.session_id, error=e)
            outcomes.append(outcome)
        return outcomes, passes

    def _verify_one(self, item: VerifyItem) -> tuple[VerifyOutcome, int]:
        drafts = item.draft_token_ids
        call = ("verify", item.position, tuple(drafts))
        s, retry = self._session_at(item.session_id, item.position, call)
        if retry:
            return s.last_result, 0
        if len(drafts) > self.max_proposal_tokens:
            raise InvalidArgument(f"{len(drafts)} draft tokens exceed max_proposal_tokens "
                                  f"{self.max_proposal_tokens}")
        self._check_ids(drafts, "draft_token_ids")
        self._check_length(item.position + len(drafts) + 1)

        def run() -> VerifyOutcome:
            base = len(s.tokens)
            s.tokens.extend(drafts)
            logits = self._next_logits(s, len(drafts) + 1)          # [K+1, V]
            draft_ids = torch.tensor(drafts, dtype=torch.int64, device=logits.device)
            n, next_token = greedy_accept(draft_ids, logits)
            self._truncate(s, base + n)
            s.tokens.append(next_token)
            return VerifyOutcome(s.id, n, next_token, len(s.tokens))

        s.last_result = self._guarded(s, run)
        s.last_call = call
        return s.last_result, 1
