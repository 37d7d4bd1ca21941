"""Where a pass inside a service goes (bench.gpu phase E), in this process: the same 1-row
verify through TargetEngine on the calling thread; on the services' model worker thread,
awaited from an asyncio loop; with an idle grpc.aio server on that loop; with a shorter GIL
switch interval too. Then what CUDA graphs make of a bare 1-token forward (a captured step
over a static cache): the ceiling for the engine's per-pass launch cost."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import torch

from bench.gpu_timing import _rewind, measure, sync


def _summary(times: list[float]) -> dict:
    return {"ms": round(statistics.median(times) * 1e3, 3),
            "min_ms": round(min(times) * 1e3, 3), "n": len(times)}


async def _on_worker(worker, fn, setup, dev, *, warmup: int, repeats: int, budget_s: float,
                     grpc_server: bool) -> dict:
    """fn's own duration on the worker thread (what specdec_forward_seconds records), and
    the whole await of it from the loop."""
    server = None
    if grpc_server:
        import grpc
        server = grpc.aio.server()
        server.add_insecure_port("127.0.0.1:0")
        await server.start()

    def once():
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        return time.perf_counter() - t0

    inner, outer = [], []
    try:
        start = time.perf_counter()
        for i in range(warmup + max(3, repeats)):
            await worker.run(setup)
            t0 = time.perf_counter()
            seconds = await worker.run(once)
            if i >= warmup:
                outer.append(time.perf_counter() - t0)
                inner.append(seconds)
            if len(inner) >= 3 and time.perf_counter() - start > budget_s:
                break
    finally:
        if server is not None:
            await server.stop(0)
    return {"pass": _summary(inner), "await": _summary(outer)}


def loaded_pass(model, prompt: list[int], *, warmup: int, repeats: int, budget_s: float
                ) -> dict:
    """The same 1-row verify on the calling thread, the model saved and loaded back through
    the services' own loading path (specdec.models.load_model) in this process."""
    import tempfile
    from pathlib import Path

    from bench.gpu_models import save_model_dir
    from specdec.models import load_model
    with tempfile.TemporaryDirectory(prefix="bench-gpu-where-") as tmp:
        save_model_dir(model, Path(tmp) / "model")
        lm = load_model(str(Path(tmp) / "model"), str(model.dtype).removeprefix("torch."),
                        str(model.device), cache_dir=str(Path(tmp) / "cache"))
        out = where_pass(lm, prompt, warmup=warmup, repeats=repeats, budget_s=budget_s,
                         threads=False)
    out["attn_implementation"] = lm.model.config._attn_implementation
    out["torch_threads"] = torch.get_num_threads()
    return out


def where_pass(lm, prompt: list[int], *, warmup: int, repeats: int, budget_s: float,
               threads: bool = True) -> dict:
    """The 1-row verify pass of one session, in the settings named in the module docstring
    (threads False: on the calling thread only)."""
    from specdec.engine import OpenItem
    from specdec.rpc.worker import ModelWorker
    from specdec.target_engine import TargetEngine, VerifyItem

    dev, pos = lm.device, len(prompt)
    engine = TargetEngine(lm, 2, 1e6, 16, max_cache_mb=0)
    engine.open_many([OpenItem("s", prompt)])
    setup = _rewind(engine, ["s"], pos)

    def fn():
        return engine.verify([VerifyItem("s", pos, [])])

    each = budget_s / 4
    out = {"calling_thread": measure(fn, dev, warmup=warmup, repeats=repeats, budget_s=each,
                                     setup=setup)}
    if not threads:
        return out
    worker = ModelWorker("where")
    kw = dict(warmup=warmup, repeats=repeats, budget_s=each)
    try:
        out["worker_idle_loop"] = asyncio.run(
            _on_worker(worker, fn, setup, dev, grpc_server=False, **kw))
        out["worker_grpc_server"] = asyncio.run(
            _on_worker(worker, fn, setup, dev, grpc_server=True, **kw))
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-4)
        try:
            out["worker_grpc_server_switch_0.1ms"] = asyncio.run(
                _on_worker(worker, fn, setup, dev, grpc_server=True, **kw))
        finally:
            sys.setswitchinterval(interval)
    finally:
        worker.shutdown()
    return out


@torch.inference_mode()
def graph_step(model, prompt: list[int], *, repeats: int, budget_s: float) -> dict:
    """A bare 1-token forward over a StaticCache holding the prompt: eager, then replayed
    from a captured CUDA graph (same inputs; the ceiling of what graphs save per pass)."""
    from transformers import StaticCache
    dev = model.device
    if dev.type != "cuda":
        return {"skipped": "CUDA graphs need a CUDA device"}
    n = len(prompt)
    cache = StaticCache(config=model.config, max_cache_len=n + 16)
    ids = torch.tensor([prompt], device=dev)
    model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True,
          cache_position=torch.arange(n - 1, device=dev), logits_to_keep=1)
    x = ids[:, -1:].clone()
    position = torch.tensor([n - 1], device=dev)

    def step():
        for layer in cache.layers:  # (its layers write where their own count says)
            layer.cumulative_length.fill_(n - 1)
        return model(input_ids=x, past_key_values=cache, use_cache=True,
                     cache_position=position, logits_to_keep=1).logits

    eager = measure(step, dev, warmup=3, repeats=repeats, budget_s=budget_s / 2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    replay = measure(graph.replay, dev, warmup=3, repeats=repeats, budget_s=budget_s / 2)
    return {"eager": eager, "graph": replay,
            "speedup": round(eager["ms"] / max(replay["ms"], 1e-6), 2)}
