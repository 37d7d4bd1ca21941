"""Static-shape passes (specdec.static_pass), forced on the CPU: padding a pass to its
(sessions, rows) bucket changes no real row's output, so greedy speculative decoding stays
token-identical to the normal path and to the target alone; passes outside the buckets fall
back to the eager path; a failed CUDA graph capture never fails a request."""

import pytest
import torch

from specdec.draft_engine import DraftEngine, ProposeItem
from specdec.static_pass import Buckets
from specdec.target_engine import TargetEngine, VerifyItem
from tiny_models import PROMPTS

MAX_NEW = 14
# rows 1, 2, 4, 8: K = 2 (3 rows) and K = 4 (5 rows) are padded, K = 8 (9 rows) is outside
BUCKETS = Buckets(sessions=(1, 2, 4, 8), rows=(1, 2, 4, 8), min_window=16)


@pytest.fixture(scope="module")
def prompts(lms):
    return [lms["target"].tokenizer(p).input_ids for p in PROMPTS]


@pytest.fixture(scope="module")
def reference(lms, prompts):
    """The target's own greedy continuation of every prompt (Hugging Face generate)."""
    lm, out = lms["target"], []
    for ids in prompts:
        with torch.inference_mode():
            gen = lm.model.generate(torch.tensor([ids]), max_new_tokens=MAX_NEW,
                                    do_sample=False, eos_token_id=lm.eos_token_ids,
                                    pad_token_id=lm.eos_token_ids[0])
        out.append(gen[0, len(ids):].tolist())
    return out


def speculate(lms, prompts, k: int, static: bool, buckets: Buckets = BUCKETS,
              scatter: bool = False):
    """Greedy speculative decoding of every prompt at once through the engines (batched
    Propose and Verify calls). Each round leaves one session in three out of the pass, so
    passes hold varying subsets of the sessions. scatter: open and close other sessions
    between them, so their slots are not 0..n-1 (the gather layout).
    Returns (tokens per prompt, the draft's and target's StaticPasses)."""
    target = TargetEngine(lms["target"], 24, 60, 8, max_batch_items=24)
    draft = DraftEngine(lms["draft_perturbed"], 24, 60, 8, max_batch_items=24)
    if static:
        for e in (target, draft):
            e.use_static_passes(graphs=False, buckets=buckets)
    state = {}
    for i, ids in enumerate(prompts):
        if scatter:
            for e in (target, draft):
                e.open(f"pad{i}", ids[:3])
        state[f"s{i}"] = {"pos": target.open(f"s{i}", ids)[1], "dpos": draft.open(f"s{i}", ids)[1],
                          "truncate": None, "append": [], "out": []}
    if scatter:
        for e in (target, draft):
            e.close_many([f"pad{i}" for i in range(len(prompts))])
    rounds = 0
    while True:
        live = [sid for sid, st in state.items() if len(st["out"]) < MAX_NEW]
        if not live:
            break
        rounds += 1
        active = [sid for j, sid in enumerate(live)
                  if len(live) < 3 or (j + rounds) % 3 != 0]
        proposals, _ = draft.propose([
            ProposeItem(sid, state[sid]["dpos"], state[sid]["truncate"], state[sid]["append"], k)
            for sid in active])
        outcomes, _, _ = target.verify([
            VerifyItem(sid, state[sid]["pos"], list(p.token_ids))
            for sid, p in zip(active, proposals, strict=True)])
        for sid, p, o in zip(active, proposals, outcomes, strict=True):
            assert p.error is None and o.error is None, (p.error, o.error)
            st = state[sid]
            st["out"] += list(p.token_ids[:o.num_accepted]) + [o.next_token_id]
            st["truncate"] = st["pos"] + o.num_accepted
            st["append"] = [o.next_token_id]
            st["dpos"], st["pos"] = p.position, o.position
        assert rounds < 200
    outputs = [state[f"s{i}"]["out"][:MAX_NEW] for i in range(len(prompts))]
    return outputs, draft.static, target.static


def assert_target_only(outputs, reference):
    for got, want in zip(outputs, reference, strict=True):
        assert got[:len(want)] == want


@pytest.mark.parametrize("sessions,k", [(1, 1), (3, 2), (5, 4), (2, 8), (8, 3)])
def test_static_passes_equal_normal_and_target_only(lms, prompts, reference, sessions, k):
    chosen = [prompts[i % len(prompts)] for i in range(sessions)]
    want = [reference[i % len(prompts)] for i in range(sessions)]
    normal, _, _ = speculate(lms, chosen, k, static=False)
    padded, d, t = speculate(lms, chosen, k, static=True)
    assert padded == normal
    assert_target_only(padded, want)
    assert d.stats.static_eager > 0 and t.stats.static_eager > 0  # the padded path ran
    if k == 8:  # 9 rows: beyond the largest row bucket, the target verifies eagerly
        assert t.stats.outside > 0
    assert not d.graphs and not t.graphs  # (graphs only on CUDA)


def test_gather_layout_and_pool_growth(lms, prompts, reference):
    chosen = prompts[:4]
    normal, _, _ = speculate(lms, chosen, 3, static=False, scatter=True)
    padded, d, t = speculate(lms, chosen, 3, static=True, scatter=True)
    assert padded == normal
    assert_target_only(padded, reference[:4])
    keys = list(t.entries)
    assert any(not direct for *_, direct in keys), keys  # scattered slots: gathered
    assert t.stats.invalidations + d.stats.invalidations > 0  # the pools grew meanwhile


def test_bucket_fit_and_window():
    b = Buckets(sessions=(1, 2, 4, 8, 16), rows=tuple(range(1, 10)), min_window=64)
    assert b.fit(1, 1) == (1, 1) and b.fit(3, 5) == (4, 5) and b.fit(9, 2) == (16, 2)
    assert b.fit(17, 1) is None and b.fit(2, 10) is None
    assert b.window(10, 1024) == 64 and b.window(65, 1024) == 128
    assert b.window(300, 256) == 256  # never past the pool's capacity
    assert Buckets.for_proposals(4).rows == (1, 2, 3, 4, 5)
    assert Buckets.for_proposals(32).rows == tuple(range(1, 10))


class EagerGraphs:
    """CudaGraphs' interface on a CPU: "replay" runs the captured function again, which
    reads the same fixed buffers a CUDA graph's kernels would; it checks that the pool's
    tensors a graph would hold are still the ones it was captured on."""

    def __init__(self, pool, fail: bool = False, stale: bool = False):
        """fail: capture raises; stale: replay skips its kernels (as a graph that read
        inputs captured once would leave an old result behind)."""
        self.pool, self.fail, self.stale, self.captured, self.resets = pool, fail, stale, 0, 0

    def capture(self, fn):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        fn()
        fn()  # (warm-up)
        self.captured += 1
        ptrs = [t.data_ptr() for t in self.pool.keys + self.pool.values]

        def replay():
            assert [t.data_ptr() for t in self.pool.keys + self.pool.values] == ptrs, \
                "a graph replayed on a reallocated pool"
            if not self.stale:
                fn()
        return replay, 1000

    def reset(self):
        self.resets += 1


def test_graph_replays_equal_normal_path(lms, prompts, reference):
    """The capture / replay flow (shared output buffer, copy-out, LRU, drops on pool
    growth) with a backend that replays eagerly: token-identical, one capture per key."""
    sessions = [prompts[i % len(prompts)] for i in range(6)]
    normal, _, _ = speculate(lms, sessions, 3, static=False)
    backends = []
    orig = TargetEngine.use_static_passes

    def with_backend(self, graphs, buckets=None, backend=None):
        backends.append(EagerGraphs(self.pool))
        orig(self, True, buckets, backends[-1])

    try:
        TargetEngine.use_static_passes = DraftEngine.use_static_passes = with_backend
        replayed, d, t = speculate(lms, sessions, 3, static=True)
    finally:
        TargetEngine.use_static_passes = DraftEngine.use_static_passes = orig
    assert replayed == normal
    assert_target_only(replayed, [reference[i % len(prompts)] for i in range(6)])
    for s, backend in zip((t, d), backends, strict=True):
        assert s.graphs and s.stats.replays > s.stats.captures > 0
        assert s.stats.captures == backend.captured and s.stats.static_eager == 0
        assert backend.resets >= s.stats.invalidations > 0
        assert s.stats.graph_bytes == 1000 * len([e for e in s.entries.values() if e.graph])


def target_only_steps(target, prompt, n: int) -> list[int]:
    """n verify calls without proposals (target-only decoding); the tokens they give."""
    sid, pos = target.open("s", prompt)
    out = []
    for _ in range(n):
        (o,), _, _ = target.verify([VerifyItem(sid, pos, [])])
        assert o.error is None
        out.append(o.next_token_id)
        pos = o.position
    return out


def test_failed_capture_falls_back_to_eager_for_good(lms, prompts, reference):
    """A capture that raises (as a CUDA graph capture can) turns graphs off: that pass and
    every later one run on the eager path, and the outputs stay exact."""
    target = TargetEngine(lms["target"], 4, 60, 8)
    backend = EagerGraphs(target.pool, fail=True)
    target.use_static_passes(graphs=True, buckets=BUCKETS, backend=backend)
    assert target_only_steps(target, prompts[0], 6) == reference[0][:6]
    assert not target.static.graphs and target.static.backend is None
    assert "stream is capturing" in target.static.stats.failure
    assert target.static.stats.replays == target.static.stats.static_eager == 0


def test_a_replay_that_differs_from_eager_turns_graphs_off(lms, prompts, reference):
    """A graph whose replay leaves a stale result (here: it runs nothing) fails the check of
    its first replay against the eager pass: graphs go off, the outputs stay exact."""
    target = TargetEngine(lms["target"], 4, 60, 8)
    target.use_static_passes(graphs=True, buckets=BUCKETS,
                             backend=EagerGraphs(target.pool, stale=True))
    assert target_only_steps(target, prompts[0], 6) == reference[0][:6]
    assert not target.static.graphs
    assert "differs from the eager pass" in target.static.stats.failure


def test_cuda_graphs_flag_is_a_no_op_on_cpu(lms):
    e = TargetEngine(lms["target"], 4, 60, 8, cuda_graphs=True)
    assert e.static is None and e.pool.spare == 0
    e.use_static_passes(graphs=False)
    assert e.pool.spare == 1  # the scratch slot
    e.set_cuda_graphs(False)
    assert e.static is None and e.pool.spare == 0


def test_cuda_graphs_flag_parses():
    from specdec.config import model_service_config, model_service_parser
    p = model_service_parser("target", "target", 50052)
    assert model_service_config(p.parse_args(["--model", "m"])).cuda_graphs is True
    assert model_service_config(p.parse_args(["--model", "m", "--cuda-graphs", "0"])
                                ).cuda_graphs is False
