"""Static-shape passes: a batch padded to a bucket, its inputs in fixed buffers, so that the
forward pass is one fixed sequence of kernels on fixed addresses, which CUDA can capture in
a graph once and replay (as vLLM's CUDA graph runner and gpt-fast's static cache do).

The padded pass itself is device-independent and runs eagerly on a CPU (the tests force it
there and check it token-identical to the normal path); on CUDA it is captured and replayed.

Rules:
- Buckets (Buckets): a pass of B sessions feeding up to N tokens each runs as Bb x Nb, the
  smallest session bucket >= B (default 1, 2, 4, 8, 16) and row bucket >= N (default
  1 .. K+1, K = min(max proposal tokens, 8)); it attends over a window of W columns, the
  next power of two >= the longest row's length (at least 64), at most the pool's capacity.
  A pass beyond the largest buckets (a prefill, a long catch-up, more sessions, K > 8)
  runs on the normal eager path.
- Padding changes no real row's output: real row r holds session r's tokens at its own
  positions; its pad tokens, and every token of a pad row, write their keys/values to the
  pool's scratch slot (KVPool.spare, owned by no session); each real token's mask hides
  every column past its own position, so nothing a pad wrote or a pad row holds is read.
  Pad rows read the scratch slot, or (direct layout) a slot no real row of the pass reads.
- Layouts: "direct" when every session's slot is < Bb <= the pool's slots: row r is slot r,
  the pass reads the pool's first Bb slots as a view (sessions 0..n-1 in one pass, the
  common case, copy nothing); "gather" otherwise: row i reads slot[i] through a fixed
  index buffer (one index_select per layer, as the eager path's non-adjacent case).
- What is static: one flat int64 input buffer per key (ids, positions, write indices, read
  indices), the output buffer (float32 [Bb * Nb, V], one shared by every graph), and the
  pool's tensors. The pool reallocates when it grows (KVPool.generation); every graph is
  then dropped and recaptured lazily on its next use (growth doubles, so this happens a few
  times in a service's life; each capture is logged).
- Graphs (CUDA, graphs=True): a key's graph is captured on its first use (two warm-up
  passes on a side stream, then torch.cuda.graph into one memory pool shared by all the
  engine's graphs, which replay one at a time and leave their result in the shared output
  buffer, copied out before the next pass). At most Buckets.max_graphs are kept (least
  recently used dropped). A graph's first two replays are checked against the eager pass
  on the same inputs (same greedy tokens, logits within rounding). Any exception while capturing
  or replaying, or a failed check, logs a warning, drops the graphs and turns them off for
  good: that pass and every later one run eagerly.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import structlog
import torch

from .kv_cache import KVPool, PassCache

log = structlog.get_logger(__name__)


# a graph's first replays are checked against the eager pass: the first has the inputs it
# was captured on, the second new ones (a value baked in at capture shows there)
CHECKED_REPLAYS = 2


@dataclass(frozen=True)
class Buckets:
    sessions: tuple[int, ...] = (1, 2, 4, 8, 16)
    rows: tuple[int, ...] = tuple(range(1, 10))
    min_window: int = 64
    max_graphs: int = 96

    @classmethod
    def for_proposals(cls, max_proposal_tokens: int) -> Buckets:
        """Rows 1 .. K+1 for verify passes of up to K = min(max_proposal_tokens, 8)."""
        return cls(rows=tuple(range(1, min(max_proposal_tokens, 8) + 2)))

    def fit(self, sessions: int, rows: int) -> tuple[int, int] | None:
        b = next((x for x in sorted(self.sessions) if x >= sessions), None)
        n = next((x for x in sorted(self.rows) if x >= rows), None)
        return None if b is None or n is None else (b, n)

    def window(self, need: int, capacity: int) -> int:
        return min(max(self.min_window, 1 << max(need - 1, 0).bit_length()), capacity)


@dataclass
class _Entry:
    """One bucket key's fixed buffers (and graph, once captured)."""
    sessions: int
    rows: int
    window: int
    direct: bool
    inputs: torch.Tensor  # flat int64: ids, positions, dst [B*N each], read [B], rows out
    graph: object = None  # replays the captured pass (CudaGraphs.capture)
    uses: int = 0
    failed: bool = False
    checks: int = 0  # replays still to check against the eager pass

    @property
    def ids(self) -> torch.Tensor:
        n = self.sessions * self.rows
        return self.inputs[:n].view(self.sessions, self.rows)

    @property
    def positions(self) -> torch.Tensor:
        n = self.sessions * self.rows
        return self.inputs[n:2 * n].view(self.sessions, self.rows)

    @property
    def dst(self) -> torch.Tensor:
        n = self.sessions * self.rows
        return self.inputs[2 * n:3 * n]

    @property
    def read(self) -> slice | torch.Tensor:
        n = self.sessions * self.rows
        return slice(0, self.sessions) if self.direct else self.inputs[3 * n:3 * n + self.sessions]

    @property
    def head(self) -> int:
        """Where the rows asked for start in `inputs` (read outside the graph)."""
        return 3 * self.sessions * self.rows + self.sessions


@dataclass
class GraphStats:
    captures: int = 0
    replays: int = 0
    static_eager: int = 0  # padded passes run eagerly (no graphs: CPU, or graphs off)
    outside: int = 0  # passes outside the buckets (the normal eager path)
    invalidations: int = 0  # graphs dropped because the pool reallocated
    graph_bytes: int = 0  # memory the live graphs' pool took (CUDA memory reserved)
    out_bytes: int = 0  # the graphs' shared float32 output buffer
    failure: str = ""  # why graphs were turned off
    by_key: dict = field(default_factory=dict)


class StaticPasses:
    """The engine's padded passes (and their CUDA graphs, when `graphs`)."""

    def __init__(self, model, pool: KVPool, buckets: Buckets, *, graphs: bool,
                 max_position: int, backend=None):
        """graphs: capture and replay (CUDA only, unless a `backend` with CudaGraphs'
        interface is given: the tests replay "graphs" that run eagerly on a CPU)."""
        self.model, self.pool, self.buckets = model, pool, buckets
        self.device = pool.device
        self.graphs = bool(graphs) and (backend is not None or self.device.type == "cuda")
        self.max_position = max_position
        self.entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.generation = pool.generation
        self.stats = GraphStats()
        self._out: torch.Tensor | None = None  # [max Bb * max Nb, V] float32 (graphs)
        self.backend = (backend or CudaGraphs(self.device)) if self.graphs else None
        pool.set_spare(1)

    # ---- the pass --------------------------------------------------------------------
    def run(self, slots: list[int], past: list[int], feed: list[list[int]],
            lasts: list[int]) -> torch.Tensor | None:
        """Float32 logits [sum(lasts), V]: session i's last lasts[i] fed positions, in
        order. None when the pass is outside the buckets (or graphs just failed): the
        caller runs its eager path. The pool must hold room for every row already."""
        if self.stats.failure:  # graphs failed: the normal eager path from now on
            return None
        b, n = len(slots), max(len(f) for f in feed)
        fit = self.buckets.fit(b, n)
        if fit is None:
            self.stats.outside += 1
            return None
        if self.pool.generation != self.generation:
            if self.entries:
                self.stats.invalidations += 1
                if self.graphs:
                    log.info("cuda graphs dropped: the KV pool reallocated",
                             graphs=sum(e.graph is not None for e in self.entries.values()))
            self.drop()
            self.generation = self.pool.generation
        if not self.graphs:
            self.stats.static_eager += 1
            entry, rows = self._prepare(fit, slots, past, feed, lasts)
            logits = self._forward(entry)
            return logits.view(entry.sessions * entry.rows, -1).index_select(0, rows).float()
        try:  # never fail a request over a graph: any error turns them off for good
            entry, rows = self._prepare(fit, slots, past, feed, lasts)
            if entry.graph is None:
                self._capture(entry)
                entry.checks = CHECKED_REPLAYS
            entry.graph()
            self.stats.replays += 1
            out = self._out.index_select(0, rows)
            if entry.checks:
                entry.checks -= 1
                self._check_replay(entry, rows, out)
            return out
        except Exception as e:
            self._give_up(e)
            return None

    def _prepare(self, fit: tuple[int, int], slots, past, feed, lasts
                 ) -> tuple[_Entry, torch.Tensor]:
        """The pass's entry, its buffer filled; and the rows to read out."""
        bb, nb = fit
        need = max(p + len(f) for p, f in zip(past, feed, strict=True))
        window = self.buckets.window(need, self.pool.capacity)
        direct = max(slots) < bb <= self.pool.slots
        entry = self._entry((bb, nb, window, direct))
        return entry, self._fill(entry, slots, past, feed, lasts)

    def _entry(self, key: tuple) -> _Entry:
        entry = self.entries.get(key)
        if entry is None:
            bb, nb, window, direct = key
            size = 4 * bb * nb + bb
            entry = _Entry(bb, nb, window, direct,
                           torch.zeros(size, dtype=torch.int64, device=self.device))
            self.entries[key] = entry
            while len(self.entries) > self.buckets.max_graphs:
                self.entries.popitem(last=False)  # least recently used
        self.entries.move_to_end(key)
        entry.uses += 1
        return entry

    def _fill(self, e: _Entry, slots, past, feed, lasts) -> torch.Tensor:
        """Write the pass's inputs into e's buffer (one host-to-device copy); returns the
        flat [Bb * Nb] indices of the rows asked for, session by session (a view of it)."""
        bb, nb, cap = e.sessions, e.rows, self.pool.capacity
        scratch = self.pool.slots * cap  # flat index of the scratch slot's first column
        top = self.max_position - 1
        ids = [0] * (bb * nb)
        pos = [min(t, top) for _ in range(bb) for t in range(nb)]
        dst = [scratch + (i % cap) for i in range(bb * nb)]
        read = [self.pool.slots] * bb
        want: list[int] = []
        for i, (slot, p, f, last) in enumerate(zip(slots, past, feed, lasts, strict=True)):
            row = slot if e.direct else i
            base, k = row * nb, len(f)
            ids[base:base + k] = f
            pos[base:base + nb] = [min(p + t, top) for t in range(nb)]
            dst[base:base + k] = range(slot * cap + p, slot * cap + p + k)
            read[i] = slot
            want.extend(range(base + k - last, base + k))
        flat = ids + pos + dst + read + want
        e.inputs[:len(flat)].copy_(torch.tensor(flat, dtype=torch.int64))
        return e.inputs[e.head:e.head + len(want)]

    def _forward(self, e: _Entry) -> torch.Tensor:
        """The padded pass on e's buffers: logits [Bb, Nb, V] (every row)."""
        positions = e.positions
        columns = torch.arange(e.window, device=self.device)
        mask = (columns[None, None, :] <= positions[:, :, None])[:, None]   # [B, 1, N, W]
        cache = PassCache(self.pool, e.dst, None, e.read, e.window)
        return self.model(input_ids=e.ids, attention_mask=mask, position_ids=positions,
                          past_key_values=cache, use_cache=True).logits

    # ---- CUDA graphs ------------------------------------------------------------------
    def _capture(self, e: _Entry) -> None:
        """Capture e's pass. Its buffers hold this pass's inputs: the warm-up passes write
        this pass's keys and values, as the replay that follows writes them again."""
        n = e.sessions * e.rows
        if self._out is None:
            width = self._forward(e).shape[-1]
            most = max(self.buckets.sessions) * max(self.buckets.rows)
            self._out = torch.empty(most, width, dtype=torch.float32, device=self.device)
            self.stats.out_bytes = self._out.numel() * 4

        def body():
            self._out[:n].copy_(self._forward(e).view(n, -1))

        e.graph, grew = self.backend.capture(body)
        self.stats.captures += 1
        self.stats.graph_bytes += grew
        key = f"{e.sessions}x{e.rows}@{e.window}{'' if e.direct else '/gather'}"
        self.stats.by_key[key] = grew
        log.info("cuda graph captured", sessions=e.sessions, rows=e.rows, window=e.window,
                 layout="direct" if e.direct else "gather", graphs=len(self.entries),
                 grew_bytes=grew, graph_bytes=self.stats.graph_bytes,
                 out_bytes=self.stats.out_bytes)

    def _check_replay(self, e: _Entry, rows: torch.Tensor, replayed: torch.Tensor) -> None:
        """A graph's first replays must give the eager pass's logits on the same inputs (the
        eager pass writes the same keys and values again): a graph that read stale inputs
        would otherwise give wrong tokens silently. A mismatch turns graphs off (run)."""
        n = e.sessions * e.rows
        eager = self._forward(e).view(n, -1).index_select(0, rows).float()
        if not torch.equal(replayed.argmax(-1), eager.argmax(-1)) or not torch.allclose(
                replayed, eager, rtol=0.0, atol=0.05 * (1.0 + eager.abs().max().item())):
            diff = (replayed - eager).abs().max().item()
            raise RuntimeError(f"a replayed cuda graph differs from the eager pass "
                               f"(bucket {e.sessions}x{e.rows}@{e.window}, max |diff| {diff:.3g})")

    def _give_up(self, error: Exception) -> None:
        self.graphs = False
        self.stats.failure = f"{type(error).__name__}: {error}"[:500]
        log.warning("cuda graphs off for good after a failure; passes run eagerly",
                    error=self.stats.failure, exc_info=True)
        self.drop()
        self.backend = None

    def drop(self) -> None:
        """Forget every entry and graph (their memory returns to the caching allocator)."""
        self.entries.clear()
        if self.backend is not None:
            self.backend.reset()
        self.stats.graph_bytes = 0
        self.stats.by_key.clear()


class CudaGraphs:
    """The thin CUDA layer: capture a function's kernels into a graph and replay them.
    Every graph of one engine shares one memory pool (they replay one at a time)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pool = None

    def capture(self, fn) -> tuple[object, int]:
        """Warm fn up on a side stream, capture it; returns (replay, bytes the capture
        added to the CUDA memory reserved)."""
        dev = self.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(dev).wait_stream(side)
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()  # (torch.cuda.graph does too: count only what it adds)
        before = torch.cuda.memory_reserved(dev)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (another engine) don't break capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            fn()
        torch.cuda.synchronize(dev)
        return graph.replay, max(torch.cuda.memory_reserved(dev) - before, 0)

    def reset(self) -> None:
        """A fresh pool for the next captures (the old one goes with its graphs)."""
        self.pool = None
