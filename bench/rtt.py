"""make bench-rtt: what placing the draft and the target on other machines costs.

python -m bench.rtt [--pair NAME | --draft M --target M] [--rtts-ms 0,1,5,20] [--k 4]
                    [--prompts 3] [--max-new-tokens 128] [--dtype D] [--threads 2]

Starts the three services locally, then a delay proxy (bench/delayproxy.py) in front of
the draft and of the target, and for every added round-trip time (half of it each way, on
both links) runs each code prompt with K=0 (target-only through the same services and the
same delayed link) and with K, side by side. Greedy outputs of K and K=0 must match.
Writes results/bench-rtt/rtt.json and rtt.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from bench.delayproxy import DelayProxy
from bench.pairs import DEFAULT_PAIR, PAIRS
from bench.prompts import domain_prompts
from bench.run import run_specdec
from bench.stats import speedup, throughput
from specdec.config import default_cache_dir
from specdec.fetch import resolve_model_dir
from specdec.launch import spawn, start_local_stack, wait_serving
from specdec.v1 import generator_pb2_grpc


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.rtt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", default=DEFAULT_PAIR, choices=sorted(PAIRS))
    p.add_argument("--draft", help="draft model (overrides --pair)")
    p.add_argument("--target", help="target model (overrides --pair)")
    p.add_argument("--dtype", help="both models' dtype (default: the pair's)")
    p.add_argument("--rtts-ms", default="0,1,5,20", help="added round-trip times, ms")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--prompts", type=int, default=3, help="HumanEval prompts")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("results/bench-rtt"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    pair = PAIRS[args.pair]
    draft, target = args.draft or pair.draft, args.target or pair.target
    dtype = args.dtype or pair.dtype
    for model in (draft, target):
        resolve_model_dir(model, default_cache_dir())
    args.out.mkdir(parents=True, exist_ok=True)
    rtts = [float(r) for r in args.rtts_ms.split(",")]
    prompts = domain_prompts("code")[:args.prompts]
    print(f"bench-rtt: {draft} -> {target}, {dtype}, K={args.k} vs K=0, added RTT {rtts} ms, "
          f"{len(prompts)} code prompts, {args.max_new_tokens} tokens", flush=True)
    stack = start_local_stack(draft, target, log_dir=args.out / "logs", dtype=dtype,
                              threads=args.threads, draft_dtype=pair.draft_dtype)
    draft_proc, target_proc = stack.processes[:2]
    proxies = [DelayProxy(draft_proc.port), DelayProxy(target_proc.port)]
    coordinator = spawn("coordinator-rtt", "coordinator",
                        ["--draft", proxies[0].addr, "--target", proxies[1].addr, "--port", "0"],
                        args.out / "logs", {})
    stack.processes.append(coordinator)
    rows = []
    try:
        wait_serving(coordinator, 600)
        with grpc.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
            stub = generator_pb2_grpc.GeneratorStub(channel)
            run_specdec(stub, prompts[0], args.k, 0.0, 1.0, 0, 8)  # warm the path
            for rtt in rtts:
                for proxy in proxies:
                    proxy.delay_s = rtt / 2e3
                runs = {0: [], args.k: []}
                for prompt in prompts:
                    for k in runs:
                        runs[k].append(run_specdec(stub, prompt, k, 0.0, 1.0, 0,
                                                   args.max_new_tokens))
                mismatches = sum(a["ids"] != b["ids"] for a, b in zip(*runs.values(),
                                                                       strict=True))
                tps = {k: throughput([r["tokens"] for r in rs], [r["total_s"] for r in rs])
                       for k, rs in runs.items()}
                row = {"added_rtt_ms": rtt, "k": args.k, "tokens_per_s_k0": tps[0],
                       "tokens_per_s": tps[args.k], "speedup_vs_k0": speedup(tps[args.k], tps[0]),
                       "rounds": sum(r["stats"]["rounds"] for r in runs[args.k]),
                       "acceptance_rate": sum(r["stats"]["accepted_draft_tokens"]
                                              for r in runs[args.k]) /
                       max(1, sum(r["stats"]["proposed_draft_tokens"] for r in runs[args.k])),
                       "greedy_mismatches": mismatches}
                rows.append(row)
                print(f"added RTT {rtt:5g} ms: K={args.k} {tps[args.k]:.2f} tok/s, "
                      f"K=0 {tps[0]:.2f} tok/s, speedup {row['speedup_vs_k0']:.2f}x, "
                      f"mismatches {mismatches}", flush=True)
    finally:
        for proxy in proxies:
            proxy.close()
        stack.stop()
    record = {"draft": draft, "target": target, "dtype": dtype, "threads": args.threads,
              "max_new_tokens": args.max_new_tokens, "prompts": len(prompts), "rows": rows}
    (args.out / "rtt.json").write_text(json.dumps(record, indent=1))
    lines = ["| added RTT (ms) | K | tokens/s | K=0 tokens/s | speedup | acceptance | mismatches |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['added_rtt_ms']:g} | {r['k']} | {r['tokens_per_s']:.2f} | "
              f"{r['tokens_per_s_k0']:.2f} | {r['speedup_vs_k0']:.2f} | "
              f"{r['acceptance_rate']:.3f} | {r['greedy_mismatches']} |" for r in rows]
    (args.out / "rtt.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results: {args.out}/rtt.json, rtt.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
