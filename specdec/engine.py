"""The model engine both services share: sessions, their KV caches, prefill and roll-back.

DraftEngine (draft_engine.py) and TargetEngine (target_engine.py) add proposing and
verifying. Engines are synchronous and not thread-safe: each service runs all calls of its
engine on one worker thread. They raise specdec.errors on bad input and never import grpc.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog
import torch

from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, OutOfRange, SpecdecError
from .kv_cache import ATTENTION, KVPool, PassCache
from .models import LoadedModel
from .sampling import GREEDY, SamplingParams, generator_for
from .sessions import Session, SessionStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class OpenItem:
    session_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = GREEDY
    max_tokens: int = 0  # most tokens the session will hold; 0 = the model's context


@dataclass(frozen=True)
class OpenOutcome:
    session_id: str
    position: int = 0
    error: SpecdecError | None = None


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of KV cache one token takes: keys and values, every layer and KV head."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * heads * head_dim * torch.finfo(dtype).bits // 8


class Engine:
    """Sessions and their caches on one model; the operations both services share."""

    role = "model"  # names the session generators' stream ("draft" / "target")
    runs_model = True  # False: sessions are never fed to the model (prompt lookup alone)

    def __init__(self, lm: LoadedModel, max_sessions: int, session_ttl_s: float,
                 max_proposal_tokens: int, max_batch_items: int = 64, max_cache_mb: float = 0):
        """max_cache_mb: bound on the KV cache memory (0 = none): the sessions' reservations
        (each its max_tokens, or the model's context) and the pool's slots, one per session
        as long as the longest reservation (specdec.kv_cache)."""
        self.lm = lm
        self.kv_bytes_per_token = kv_bytes_per_token(lm.model.config, lm.model.dtype)
        budget = int(max_cache_mb * 2**20 // self.kv_bytes_per_token) if max_cache_mb else None
        self.sessions = SessionStore(max_sessions, session_ttl_s, max_reserved_tokens=budget,
                                     on_drop=self._release)
        self.pool = KVPool(lm.model.config, lm.model.dtype, lm.device, max_sessions,
                           lm.max_context_length, budget)
        lm.model.set_attn_implementation(ATTENTION)  # sdpa, serving the pool's masks
        self.max_proposal_tokens = max_proposal_tokens
        self.max_batch_items = max_batch_items

    @property
    def reserved_bytes(self) -> int:
        """KV cache bytes the live sessions reserved."""
        return self.sessions.reserved_tokens * self.kv_bytes_per_token

    # ---- validation -------------------------------------------------------------------
    def _check_ids(self, ids: list[int], what: str) -> None:
        bad = [t for t in ids if t >= self.lm.vocab_size]
        if bad:
            raise InvalidArgument(f"{what}: token id {bad[0]} is outside the vocabulary "
                                  f"[0, {self.lm.vocab_size})")

    def _check_length(self, length: int, s: Session | None = None) -> None:
        if length > self.lm.max_context_length:
            raise OutOfRange(f"the session would hold {length} tokens, more than the model's "
                             f"context of {self.lm.max_context_length}")
        if s is not None and length > s.reserved_tokens:
            raise OutOfRange(f"session {s.id} would hold {length} tokens, more than the "
                             f"{s.reserved_tokens} (max_tokens) it reserved when opened")

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
    def _next_logits(self, s: Session, last: int) -> torch.Tensor:
        """Feed the pending tokens; return the logits of the last `last` positions [last, V]."""
        return self._forward([s], [last])[0]

    @torch.inference_mode()
    def _forward(self, sessions: list[Session], lasts: list[int]) -> list[torch.Tensor]:
        """Feed every session's pending tokens in ONE forward pass.

        Returns, per session, the float32 logits of its last lasts[i] positions [lasts[i], V].
        Row i of the batch is session i's slot in the pool (specdec.kv_cache): its pending
        tokens padded on the right to the longest row, written at its own positions, attending
        to its own cached length. At least lasts[i] tokens are fed (cached ones again if
        fewer are pending), so the rows asked for always come out of this pass.
        """
        for s, last in zip(sessions, lasts, strict=True):
            s.cache_len = min(s.cache_len, len(s.tokens) - last)
        order = sorted(range(len(sessions)), key=lambda i: sessions[i].cache.index)
        sessions = [sessions[i] for i in order]  # adjacent slots: the pass reads a view
        lasts = [lasts[i] for i in order]
        self.pool.ensure([s.cache for s in sessions], max(len(s.tokens) for s in sessions))
        past = [s.cache_len for s in sessions]                            # B
        fed = [len(s.tokens) - s.cache_len for s in sessions]             # B
        b, n_max, dev = len(sessions), max(fed), self.lm.device
        ids = torch.tensor([s.tokens[s.cache_len:] + [0] * (n_max - f)
                            for s, f in zip(sessions, fed, strict=True)])  # [B, N]
        positions = torch.tensor([range(p, p + n_max) for p in past])      # [B, N]
        cache = PassCache(self.pool, [s.cache.index for s in sessions], past, fed)
        if n_max == 1 and len(set(past)) == 1:
            mask = None  # one token per row, every row as long: nothing to hide
        else:  # row i, token t attends to its columns 0..past[i] + t
            mask = (torch.arange(cache.length)[None, None, :] <= positions[:, :, None])[:, None]
            mask = mask.to(dev)                                            # [B, 1, N, L]
        # only the rows asked for go through the output head (a prefill or a catch-up of
        # many tokens would otherwise compute [B, N, V] logits)
        if len(set(fed)) == 1 and len(set(lasts)) == 1:
            keep = lasts[0]  # the same last rows of every row
        else:
            keep = torch.tensor([[f - last <= t < f for t in range(n_max)]
                                 for f, last in zip(fed, lasts, strict=True)]).to(dev)
        out = self.lm.model(input_ids=ids.to(dev), attention_mask=mask,
                            position_ids=positions.to(dev), past_key_values=cache,
                            use_cache=True, logits_to_keep=keep)
        logits = out.logits if out.logits.dim() == 2 else out.logits.flatten(0, 1)
        rows_out = logits.split(lasts)                           # logits: [sum(lasts), V]
        results: list[torch.Tensor] = [None] * b  # type: ignore[list-item]
        for i, s in enumerate(sessions):
            s.cache_len = len(s.tokens)
            results[order[i]] = rows_out[i].float()
        return results

    def _crop(self, s: Session, length: int) -> None:
        """Keep the first `length` tokens' cache entries (moves a length; copies nothing)."""
        s.cache_len = min(s.cache_len, length)

    def _truncate(self, s: Session, length: int) -> None:
        del s.tokens[length:]
        self._crop(s, length)

    # ---- public operations ------------------------------------------------------------
    def open(self, session_id: str, prompt: list[int], sampling: SamplingParams = GREEDY,
             max_tokens: int = 0) -> tuple[str, int]:
        """Create and prefill one session; returns (session_id, position)."""
        (outcome,) = self.open_many([OpenItem(session_id, prompt, sampling, max_tokens)])
        if outcome.error is not None:
            raise outcome.error
        return outcome.session_id, outcome.position

    def open_many(self, items: list[OpenItem]) -> list[OpenOutcome]:
        """Create sessions and prefill them all in one forward pass (every prompt token
        but the last is cached; the last stays pending). Per-item errors."""
        self._check_batch(items)
        outcomes: list[OpenOutcome | None] = [None] * len(items)
        fresh: list[tuple[int, Session]] = []
        for i, item in enumerate(items):
            try:
                s, retry = self._new_session(item)
            except SpecdecError as e:
                outcomes[i] = OpenOutcome(item.session_id, error=e)
                continue
            if retry:
                outcomes[i] = OpenOutcome(s.id, len(s.tokens))
            else:
                fresh.append((i, s))
        prefill = [s for _, s in fresh if len(s.tokens) > 1 and self.runs_model]
        if prefill:
            lasts = [s.tokens.pop() for s in prefill]
            self._guarded(prefill, lambda: self._forward(prefill, [1] * len(prefill)))
            for s, last in zip(prefill, lasts, strict=True):
                s.tokens.append(last)
        for i, s in fresh:
            outcomes[i] = OpenOutcome(s.id, len(s.tokens))
        return outcomes

    def _new_session(self, item: OpenItem) -> tuple[Session, bool]:
        """Validate and register a session (not prefilled yet). Returns (session, whether
        the call repeats the open that created it: a retry, nothing to do)."""
        prompt = item.prompt_token_ids
        if not prompt:
            raise InvalidArgument("prompt_token_ids is empty; a session needs at least one token")
        self._check_ids(prompt, "prompt_token_ids")
        self._check_length(max(len(prompt), item.max_tokens))
        item.sampling.validate()
        call = ("open", tuple(prompt), item.sampling, item.max_tokens)
        existing = self.sessions.peek(item.session_id) if item.session_id else None
        if existing is not None:
            if existing.last_call == call:
                return existing, True
            raise AlreadyExists(f"session {item.session_id} already exists with another state")
        reserve = item.max_tokens or self.lm.max_context_length
        self.sessions.check_capacity()
        live = [self.sessions.peek(sid).reserved_tokens for sid in self.sessions]
        self.pool.check_admit(len(live) + 1, max(live + [reserve]))
        s = Session(item.session_id or uuid.uuid4().hex, list(prompt), self.pool.acquire(),
                    sampling=item.sampling, reserved_tokens=reserve)
        if not item.sampling.greedy:
            s.generator = generator_for(item.sampling.seed, self.role, self.lm.device)
        s.last_call = call
        try:
            self.sessions.add(s)  # checks --max-sessions and the cache budget
        except SpecdecError:
            self._release(s)
            raise
        return s, False

    def _release(self, s: Session) -> None:
        self.pool.release(s.cache)

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

    def close_many(self, session_ids: list[str]) -> list[SpecdecError | None]:
        """Close sessions. Idempotent: closing an unknown (closed, expired) session is OK,
        so a retried or repeated close never fails."""
        self._check_count(len(session_ids))
        for sid in session_ids:
            if self.sessions.peek(sid) is not None:
                self.sessions.pop(sid)
            else:  # closed before its open arrived (or again): the open must not revive it
                self.sessions.remember_closed(sid)
        return [None] * len(session_ids)

    def warmup(self, max_new: int = 9) -> None:
        """Run the shapes serving uses once, outside any session: first use of a shape is
        slow with some kernels (CPU bf16), and that must not land on a user's request."""
        if not self.runs_model:
            return
        n = max(2, min(16, self.lm.max_context_length - max_new - 1))
        s = Session("warmup", [0] * n, self.pool.acquire())
        try:
            for extra in range(max_new):
                s.tokens.extend([0] * extra)
                self._next_logits(s, extra + 1)
                self._truncate(s, n)
        finally:
            self._release(s)

    def expire(self) -> list[str]:
        return self.sessions.expire()

    def logits(self, session_id: str) -> torch.Tensor:
        """Next-token logits [V] of a session, leaving its tokens unchanged."""
        return self._next_logits(self.sessions.get(session_id), 1)[-1]

    def _check_count(self, n: int) -> None:
        """Every batched call: at least one item, at most max_batch_items."""
        if not n:
            raise InvalidArgument("the call needs at least one item")
        if n > self.max_batch_items:
            raise InvalidArgument(f"{n} items exceed max_batch_items {self.max_batch_items}")

    def _check_batch(self, items: list) -> None:
        self._check_count(len(items))
        ids = [it.session_id for it in items if it.session_id]  # "" = assign one
        if len(set(ids)) != len(ids):
            raise InvalidArgument("a session appears more than once in one call")

    def _guarded(self, sessions: list[Session], fn):
        """Run a state change; if it fails half-way, drop the sessions rather than keep
        caches that no longer match their tokens."""
        try:
            return fn()
        except Exception:
            for s in sessions:
                if self.sessions.peek(s.id) is s:
                    self.sessions.pop(s.id)
            log.exception("sessions dropped after a failed model call",
                          session_ids=[s.id for s in sessions])
            raise
