"""The model engine both services share: sessions, their KV caches, prefill and roll-back.

DraftEngine (draft_engine.py) and TargetEngine (target_engine.py) add proposing and
verifying. Engines are synchronous and not thread-safe: each service runs all calls of its
engine on one worker thread. They raise specdec.errors on bad input and never import grpc.
"""

from __future__ import annotations

import uuid

import structlog
import torch
from transformers import DynamicCache

from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, OutOfRange
from .models import LoadedModel
from .sampling import GREEDY, SamplingParams, generator_for
from .sessions import Session, SessionStore

log = structlog.get_logger(__name__)


class Engine:
    """Sessions and their caches on one model; the operations both services share."""

    role = "model"  # names the session generators' stream ("draft" / "target")

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
    def open(self, session_id: str, prompt: list[int],
             sampling: SamplingParams = GREEDY) -> tuple[str, int]:
        """Create and prefill a session; returns (session_id, position)."""
        if not prompt:
            raise InvalidArgument("prompt_token_ids is empty; a session needs at least one token")
        self._check_ids(prompt, "prompt_token_ids")
        self._check_length(len(prompt))
        sampling.validate()
        call = ("open", tuple(prompt), sampling)
        existing = self.sessions.peek(session_id) if session_id else None
        if existing is not None:
            if existing.last_call == call:
                return existing.id, len(existing.tokens)
            raise AlreadyExists(f"session {session_id} already exists with another state")
        self.sessions.check_capacity()
        s = Session(session_id or uuid.uuid4().hex, list(prompt),
                    DynamicCache(config=self.lm.model.config), sampling=sampling)
        if not sampling.greedy:
            s.generator = generator_for(sampling.seed, self.role, self.lm.device)
        self._prefill(s)
        s.last_call = call
        self.sessions.add(s)
        return s.id, len(s.tokens)

    def truncate(self, session_id: str, position: int, length: int) -> int:
        s, retry = self._session_at(session_id, position, ("truncate", position, length))
        if not retry:
            if not 1 <= length <= position:
                raise InvalidArgument(f"length {length} must be in [1, position={position}]")
            self._truncate(s, length)
            s.draft_rows = s.recovery = None  # whatever they described is gone
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
