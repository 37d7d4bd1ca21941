"""The model engine both services share: sessions, their KV caches, prefill and roll-back.

DraftEngine (draft_engine.py) and TargetEngine (target_engine.py) add proposing and
verifying. Engines are synchronous and not thread-safe: each service runs all calls of its
engine on one worker thread. They raise specdec.errors on bad input and never import grpc.
"""

from __future__ import annotations

import inspect
import uuid
from dataclasses import dataclass

import structlog
import torch

from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, OutOfRange, SpecdecError
from .kv_cache import ATTENTION, KVPool, PassCache
from .models import LoadedModel
from .sampling import GREEDY, SamplingParams, generator_for
from .sessions import Session, SessionStore
from .static_pass import Buckets, StaticPasses

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


def mask_mapping_types(model) -> tuple[str, ...] | None:
    """The layer types when the model takes its attention masks ready-made, one per layer
    type (transformers' `causal_mask_mapping`: passing it skips create_causal_mask on every
    pass), and every layer attends fully (no sliding window our masks would have to add);
    None otherwise (the mask goes through create_causal_mask, which returns ours as is)."""
    try:
        text = model.config.get_text_config()
        types = tuple(getattr(text, "layer_types", None) or ())
        source = inspect.getsource(type(model.base_model).forward)
    except (AttributeError, OSError, TypeError):
        return None
    if not types or set(types) != {"full_attention"}:
        return None
    return ("full_attention",) if "causal_mask_mapping := attention_mask, dict" in source else None


class Engine:
    """Sessions and their caches on one model; the operations both services share."""

    role = "model"  # names the session generators' stream ("draft" / "target")
    runs_model = True  # False: sessions are never fed to the model (prompt lookup alone)

    def __init__(self, lm: LoadedModel, max_sessions: int, session_ttl_s: float,
                 max_proposal_tokens: int, max_batch_items: int = 64, max_cache_mb: float = 0,
                 cuda_graphs: bool = True):
        """max_cache_mb: bound on the KV cache memory (0 = none): the sessions' reservations
        (each its max_tokens, or the model's context) and the pool's slots, one per session
        as long as the longest reservation (specdec.kv_cache). cuda_graphs: on a CUDA
        device, decode and verify passes replay captured CUDA graphs (specdec.static_pass;
        --cuda-graphs); ignored elsewhere."""
        self.lm = lm
        self.kv_bytes_per_token = kv_bytes_per_token(lm.model.config, lm.model.dtype)
        budget = int(max_cache_mb * 2**20 // self.kv_bytes_per_token) if max_cache_mb else None
        self.sessions = SessionStore(max_sessions, session_ttl_s, max_reserved_tokens=budget,
                                     on_drop=self._release)
        self.pool = KVPool(lm.model.config, lm.model.dtype, lm.device, max_sessions,
                           lm.max_context_length, budget)
        lm.model.set_attn_implementation(ATTENTION)  # sdpa, serving the pool's masks
        self.mask_types = mask_mapping_types(lm.model)
        self.max_proposal_tokens = max_proposal_tokens
        self.max_batch_items = max_batch_items
        self.static: StaticPasses | None = None  # padded passes (CUDA graphs), or None
        self.set_cuda_graphs(cuda_graphs)

    def set_cuda_graphs(self, on: bool) -> None:
        """--cuda-graphs: replay captured graphs on CUDA; a no-op elsewhere."""
        if on and self.lm.device.type == "cuda":
            self.use_static_passes(graphs=True)
        else:
            self.static = None
            self.pool.set_spare(0)  # (no scratch slot without padded passes)

    def use_static_passes(self, graphs: bool, buckets: Buckets | None = None,
                          backend=None) -> None:
        """Run passes that fit the buckets padded to them (specdec.static_pass); graphs:
        replay them from CUDA graphs (CUDA only, or through `backend`), else run them
        eagerly (on a CPU: the tests' check that padding changes nothing)."""
        self.static = StaticPasses(self.lm.model, self.pool,
                                   buckets or Buckets.for_proposals(self.max_proposal_tokens),
                                   graphs=graphs, max_position=self.lm.max_context_length,
                                   backend=backend)

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

    def _forward(self, sessions: list[Session], lasts: list[int]) -> list[torch.Tensor]:
        """Per session, the float32 logits of its last lasts[i] positions [lasts[i], V]
        (see _forward_rows)."""
        return list(self._forward_rows(sessions, lasts).split(lasts))

    @torch.inference_mode()
    def _forward_rows(self, sessions: list[Session], lasts: list[int]) -> torch.Tensor:
        """Feed every session's pending tokens in ONE forward pass.

        Returns the float32 logits of each session's last lasts[i] positions, session after
        session [sum(lasts), V]. Row i of the batch is session i's slot in the pool
        (specdec.kv_cache): its pending tokens padded on the right to the longest row,
        written at its own positions, attending to its own cached length. At least lasts[i]
        tokens are fed (cached ones again if fewer are pending), so the rows asked for
        always come out of this pass. Passes that fit the static-shape buckets run padded
        to them (specdec.static_pass: CUDA graphs), the others eagerly.
        """
        past = []
        for s, last in zip(sessions, lasts, strict=True):
            s.cache_len = min(s.cache_len, len(s.tokens) - last)
            past.append(s.cache_len)
        self.pool.ensure([s.cache for s in sessions], max(len(s.tokens) for s in sessions))
        slots = [s.cache.index for s in sessions]
        feed = [s.tokens[p:] for s, p in zip(sessions, past, strict=True)]
        out = None if self.static is None else self.static.run(slots, past, feed, lasts)
        if out is None:
            out = self._eager_pass(slots, past, feed, lasts)
        for s in sessions:
            s.cache_len = len(s.tokens)
        return out

    def _eager_pass(self, slots: list[int], past: list[int], feed: list[list[int]],
                    lasts: list[int]) -> torch.Tensor:
        b, dev = len(slots), self.lm.device
        order = sorted(range(b), key=slots.__getitem__)
        permuted = order != list(range(b))
        if permuted:  # adjacent slots in order: the pass reads a view of the pool
            slots, past, feed = ([x[i] for i in order] for x in (slots, past, feed))
            lasts_in = lasts
            lasts = [lasts[i] for i in order]
        fed = [len(f) for f in feed]
        n_max = max(fed)
        if n_max == 1:  # a decode step: ids, positions and write indices in one tensor
            cap = self.pool.capacity
            flat = torch.tensor([f[0] for f in feed] + past
                                + [s * cap + p for s, p in zip(slots, past, strict=True)],
                                device=dev)
            ids, positions = flat[:b].view(b, 1), flat[b:2 * b].view(b, 1)         # [B, 1]
            adjacent = slots[-1] - slots[0] == b - 1  # (sorted, distinct)
            read = (slice(slots[0], slots[0] + b) if adjacent
                    else torch.tensor(slots, device=dev))
            cache = PassCache(self.pool, flat[2 * b:], None, read, max(past) + 1)
        else:
            ids = torch.tensor([f + [0] * (n_max - len(f)) for f in feed], device=dev)
            positions = (torch.tensor(past, device=dev)[:, None]
                         + torch.arange(n_max, device=dev))                        # [B, N]
            cache = PassCache.for_rows(self.pool, slots, past, fed)
        if n_max == 1 and min(past) == max(past):
            mask = None  # one token per row, every row as long: nothing to hide
        else:  # row i, token t attends to its columns 0..past[i] + t
            columns = torch.arange(cache.length, device=dev)
            mask = (columns[None, None, :] <= positions[:, :, None])[:, None]    # [B, 1, N, L]
        if self.mask_types is not None:
            mask = dict.fromkeys(self.mask_types, mask)
        # only the rows asked for go through the output head (a prefill or a catch-up of
        # many tokens would otherwise compute [B, N, V] logits)
        if min(fed) == n_max and min(lasts) == max(lasts):
            keep = lasts[0]  # the same last rows of every row
        else:
            keep = torch.tensor([[f - last <= t < f for t in range(n_max)]
                                 for f, last in zip(fed, lasts, strict=True)], device=dev)
        out = self.lm.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True, logits_to_keep=keep)
        logits = out.logits if out.logits.dim() == 2 else out.logits.flatten(0, 1)
        logits = logits.float()                                  # [sum(lasts), V]
        if permuted:  # back to the callers' order, session after session
            starts = [0] * b
            at = 0
            for j, i in enumerate(order):
                starts[i] = at
                at += lasts[j]
            back = [r for i in range(b) for r in range(starts[i], starts[i] + lasts_in[i])]
            logits = logits.index_select(0, torch.tensor(back, device=logits.device))
        return logits

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
