"""The KV cache of one engine: a pool of slots, one per session, in preallocated tensors.

Per layer, keys and values are [slots, capacity, kv_heads, head_dim] (token-major, so a
pass writes its new tokens with one index_copy_ per layer; attention reads the transposed
view [slots, kv_heads, capacity, head_dim]). A session holds one slot and a length
(Session.cache_len); rolling back moves the length, nothing is copied. A forward pass sees
the pool through a PassCache (transformers' Cache interface): each row writes its new
keys/values at its own positions of its own slot, and attention reads the rows' slots up to
the longest row (a view when the rows' slots are adjacent, one gather of just those slots
otherwise), masked per row by its length. The pool grows by reallocating
(doubling, so the copies are amortized) and packs the live slots to the front when it does;
`generation` counts reallocations (whatever holds the tensors' addresses, such as captured
CUDA graphs, is stale once it changes). With `spare` = 1 the tensors hold one more slot past
the last, a scratch slot no session owns: the static-shape pass (specdec.static_pass) points
its padding rows and tokens there.

The attention function registered here ("specdec_slots", transformers' sdpa otherwise)
serves grouped-query models without repeating keys and values per query head: the query
heads that share a KV head become extra query rows of that head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import Cache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from .errors import ResourceExhausted

ATTENTION = "specdec_slots"
MIN_CAPACITY = 16  # tokens per slot of a new pool


class Slot:
    """A session's place in the pool; `index` changes when the pool is packed."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


class KVPool:
    def __init__(self, config, dtype: torch.dtype, device: torch.device, max_slots: int,
                 max_len: int, budget_tokens: int | None = None):
        """max_slots / max_len: the largest pool (sessions, tokens per session);
        budget_tokens: bound on slots x capacity (--max-cache-mb), None = none."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.layers = text.num_hidden_layers
        self.kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        self.head_dim = (getattr(text, "head_dim", None)
                         or text.hidden_size // text.num_attention_heads)
        self.dtype, self.device = dtype, device
        self.max_slots, self.max_len, self.budget_tokens = max_slots, max_len, budget_tokens
        self.keys: list[torch.Tensor] = []    # per layer [S, C, H, D]
        self.values: list[torch.Tensor] = []  # per layer [S, C, H, D]
        self.slots, self.capacity = 0, 0
        self.live: list[Slot] = []
        self.spare = 0  # scratch slots after the last (index self.slots)
        self.generation = 0  # reallocations so far

    def set_spare(self, spare: int) -> None:
        """Keep `spare` scratch slots after the last slot (reallocates a pool that has
        storage already)."""
        if spare != self.spare:
            self.spare = spare
            if self.keys:
                self._reallocate(self.slots, self.capacity)

    @property
    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def check_admit(self, sessions: int, longest: int) -> None:
        """Refuse a pool of `sessions` slots of `longest` tokens beyond the budget."""
        if self.budget_tokens is not None and sessions * longest > self.budget_tokens:
            raise ResourceExhausted(
                f"{sessions} sessions of up to {longest} tokens (the longest max_tokens "
                f"reserved) need {sessions * longest} tokens of KV cache slots; the budget "
                f"(--max-cache-mb) holds {self.budget_tokens}; retry later or ask for fewer "
                f"tokens")

    def acquire(self) -> Slot:
        used = {s.index for s in self.live}
        slot = Slot(next(i for i in range(len(self.live) + 1) if i not in used))
        self.live.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        if slot in self.live:
            self.live.remove(slot)

    def ensure(self, slots: list[Slot], length: int) -> None:
        """Make room for `slots` to hold `length` tokens each (grows the pool if needed)."""
        top = max(s.index for s in slots) + 1
        if top <= self.slots and length <= self.capacity:
            return
        need_slots = len(self.live)  # packed: live slots take indices 0..n-1
        need_len = max(length, self.capacity)
        new_slots = min(max(need_slots, 2 * self.slots, 1), self.max_slots)
        new_len = min(max(1 << (need_len - 1).bit_length(), MIN_CAPACITY), self.max_len)
        if self.budget_tokens is not None:  # shrink the doubling's overshoot to the budget
            new_len = max(need_len, min(new_len, self.budget_tokens // new_slots))
            new_slots = max(need_slots, min(new_slots, self.budget_tokens // new_len))
        self._reallocate(max(new_slots, need_slots), new_len)

    def _reallocate(self, slots: int, capacity: int) -> None:
        shape = (slots + self.spare, capacity, self.kv_heads, self.head_dim)
        keys = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                for _ in range(self.layers)]
        values = [torch.zeros(shape, dtype=self.dtype, device=self.device)
                  for _ in range(self.layers)]
        order = sorted(self.live, key=lambda s: s.index)  # slots without storage yet: last
        stored = [s.index for s in order if s.index < self.slots]
        if stored:
            old = torch.tensor(stored, dtype=torch.int64, device=self.device)
            n, c = len(stored), self.capacity
            for layer in range(self.layers):
                keys[layer][:n, :c] = self.keys[layer].index_select(0, old)
                values[layer][:n, :c] = self.values[layer].index_select(0, old)
        for new_index, s in enumerate(order):
            s.index = new_index
        self.keys, self.values, self.slots, self.capacity = keys, values, slots, capacity
        self.generation += 1


class PassCache(Cache):
    """One forward pass's view of the pool: row b of the batch reads slot read[b] (a slice
    of slots, or an index tensor [B]) up to `length` columns; the pass's new keys/values
    [B * N] rows (or those `src` selects) are written at the flat [slots * capacity]
    indices `dst` of the pool. Built from per-row lists by `for_rows`, or from a static
    pass's fixed buffers (specdec.static_pass), so nothing here depends on the values."""

    def __init__(self, pool: KVPool, dst: torch.Tensor, src: torch.Tensor | None,
                 read: slice | torch.Tensor, length: int):
        super().__init__(layers=[])
        self.pool, self.dst, self.src, self.read, self.length = pool, dst, src, read, length

    @classmethod
    def for_rows(cls, pool: KVPool, slots: list[int], past: list[int],
                 fed: list[int]) -> PassCache:
        """Row b is slot slots[b]; it holds past[b] cached tokens and feeds fed[b] tokens
        (padded on the right to the longest row) at positions past[b] + 0, 1, ...; pads
        are not written."""
        n_max, cap, dev, b = max(fed), pool.capacity, pool.device, len(slots)
        length = max(p + f for p, f in zip(past, fed, strict=True))
        # flat [B * N] index of each fed token in the pass, and [S * C] index in the pool
        if n_max == 1:  # a decode step: one token per row, nothing to select
            src = None
            dst = torch.tensor([s * cap + p for s, p in zip(slots, past, strict=True)],
                               device=dev)
        else:
            src_l = [i * n_max + t for i, f in enumerate(fed) for t in range(f)]
            src = None if len(src_l) == b * n_max else torch.tensor(src_l, device=dev)
            dst = torch.tensor([s * cap + p + t for s, p, f in zip(slots, past, fed, strict=True)
                                for t in range(f)], device=dev)
        first = slots[0]
        adjacent = slots == list(range(first, first + b))
        read = slice(first, first + b) if adjacent else torch.tensor(slots, device=dev)
        return cls(pool, dst, src, read, length)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """key_states / value_states: [B, H, N, D]. Returns the rows' keys and values
        [B, H, length, D]."""
        out = []
        read, length = self.read, self.length
        for store, new in ((self.pool.keys[layer_idx], key_states),
                           (self.pool.values[layer_idx], value_states)):
            rows = new.transpose(1, 2).reshape(-1, *store.shape[2:])     # [B*N, H, D]
            if self.src is not None:
                rows = rows.index_select(0, self.src)                      # [M, H, D]
            if rows.dtype != store.dtype:
                rows = rows.to(store.dtype)
            store.view(-1, *store.shape[2:]).index_copy_(0, self.dst, rows)
            window = (store[read, :length] if isinstance(read, slice)      # [B, L, H, D]
                      else store[:, :length].index_select(0, read))
            out.append(window.transpose(1, 2))                              # [B, H, L, D]
        return out[0], out[1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.length - 1


def slot_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0,
                   scaling: float | None = None, **kwargs):
    """sdpa over [B, Hkv, L, D] keys without repeating them per query head.

    query [B, Hq, N, D]; attention_mask [B, 1, N, L] bool (True = attend) or None with N = 1.
    Any other case goes to transformers' sdpa."""
    b, hq, n, d = query.shape
    hkv = key.shape[1]
    packable = (attention_mask is None and n == 1) or (
        attention_mask is not None and attention_mask.dtype == torch.bool
        and attention_mask.dim() == 4 and attention_mask.shape[1] == 1)
    if not packable or hq % hkv or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    rep = hq // hkv
    q = query.reshape(b, hkv, rep * n, d)  # row r*N + t: query head (h*rep + r), token t
    mask = None if attention_mask is None else attention_mask.repeat(1, 1, rep, 1)
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(b, hq, n, d).transpose(1, 2).contiguous(), None  # [B, N, Hq, D]


AttentionInterface.register(ATTENTION, slot_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
