"""make bench-pipeline: drafting in turns vs drafting ahead (--draft-ahead), side by side.

python -m bench.pipeline [--configs shared,pinned,pinned-ahead,shared-ahead] [--k 4]
                         [--domains code] [--prompts 3] [--max-new-tokens 128]

Each configuration starts its own three processes (Qwen pair, bf16 target, the pair's draft
quantization), runs K=0 and K greedy on the same prompts, and stops them:

- shared: the default. Lockstep schedule; draft and target each run 2 threads over all
  CPUs and take turns.
- pinned: lockstep; the draft pinned to one CPU and the target to another (sched_setaffinity,
  as taskset -c), 1 thread each: a stand-in for two devices.
- pinned-ahead: pinned, with --schedule pipelined --draft-ahead 1 on the coordinator: the
  draft proposes the next round while the target verifies.
- shared-ahead: drafting ahead with 2 threads each on shared CPUs (they then compete).

Ratios are against the shared configuration's K=0 (the target alone as it runs by default;
the first configuration's when shared is not run), measured in the same run. Writes
results/pipeline/pipeline.{jsonl,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.pairs import DEFAULT_PAIR, PAIRS
from bench.prompts import DOMAINS
from bench.run import Plan, sweep
from bench.stats import speedup
from specdec.config import default_cache_dir
from specdec.fetch import resolve_model_dir
from specdec.launch import start_local_stack
from specdec.models import load_tokenizer

AHEAD = ("--schedule", "pipelined", "--draft-ahead", "1")
CONFIGS = {  # name: (pinned, coordinator flags)
    "shared": (False, ()),
    "pinned": (True, ()),
    "pinned-ahead": (True, AHEAD),
    "shared-ahead": (False, AHEAD),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--k", default=4, type=int, help="K of the speculative runs")
    p.add_argument("--domains", default="code", help=f"from {', '.join(DOMAINS)}")
    p.add_argument("--prompts", type=int, default=3, help="prompts per domain")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads per service in the shared configurations")
    p.add_argument("--out", type=Path, default=Path("results/pipeline"))
    args = p.parse_args(argv)
    unknown = set(args.configs.split(",")) - set(CONFIGS)
    if unknown:
        p.error(f"--configs: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    pair = PAIRS[DEFAULT_PAIR]
    cpus = sorted(os.sched_getaffinity(0))
    configs = args.configs.split(",")
    if len(cpus) < 2 and any(CONFIGS[c][0] for c in configs):
        print(f"only {len(cpus)} CPU available: skipping the pinned configurations")
        configs = [c for c in configs if not CONFIGS[c][0]]
    for model in (pair.draft, pair.target):
        resolve_model_dir(model, default_cache_dir())
    tokenizer = load_tokenizer(pair.target, default_cache_dir())
    plan = Plan([str(args.k)], [0.0], args.domains.split(","), args.prompts,
                args.max_new_tokens, peer=False)
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    with (args.out / "pipeline.jsonl").open("w") as out:
        for name in configs:
            pinned, coordinator_args = CONFIGS[name]
            threads = 1 if pinned else args.threads
            print(f"--- {name}: {threads} thread(s) per service"
                  + (f", draft on CPU {cpus[0]}, target on CPU {cpus[1]}" if pinned else "")
                  + (", drafting ahead" if coordinator_args else ""), flush=True)
            base = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": name,
                    "draft": pair.draft, "target": pair.target, "dtype": pair.dtype,
                    "draft_quantization": pair.draft_quantization, "threads": threads,
                    "pinned": pinned, "draft_ahead": bool(coordinator_args),
                    "max_new_tokens": args.max_new_tokens}
            stack = start_local_stack(
                pair.draft, pair.target, log_dir=args.out / "logs" / name, dtype=pair.dtype,
                threads=threads, draft_args=("--quantization", pair.draft_quantization),
                coordinator_args=coordinator_args,
                cpus={"draft": {cpus[0]}, "target": {cpus[1]}} if pinned else None)
            try:
                records += sweep(stack.addr, tokenizer, plan, base, out)
            finally:
                stack.stop()
    table = report(records, configs, plan)
    (args.out / "pipeline.md").write_text(
        f"`python -m bench.pipeline {' '.join(argv or sys.argv[1:])}`\n\n{table}\n")
    print(table)
    print(f"results: {args.out}/pipeline.jsonl, pipeline.md")
    return 0


def report(records: list[dict], configs: list[str], plan: Plan) -> str:
    reference = "shared" if "shared" in configs else configs[0]
    lines = [f"| domain | configuration | K | tokens/s | × vs {reference} K=0 | acceptance | "
             "ahead blocks used / discarded |", "|---|---|---|---|---|---|---|"]
    for domain in plan.domains:
        rows = [r for r in records if r["domain"] == domain]
        ref = next((r for r in rows if r["config"] == reference and r["k"] == 0), None)
        for name in configs:
            for r in sorted((r for r in rows if r["config"] == name), key=lambda r: r["k"]):
                stats = [run["stats"] for run in r["runs"] if run.get("stats")]
                used = sum(s.get("ahead_used_blocks", 0) for s in stats)
                discarded = sum(s.get("ahead_discarded_blocks", 0) for s in stats)
                ratio = speedup(r["tokens_per_s"], ref["tokens_per_s"]) if ref else float("nan")
                acc = r.get("acceptance_rate", float("nan"))
                lines.append(f"| {domain} | {name} | {r['k']} | {r['tokens_per_s']:.2f} | "
                             f"{ratio:.2f} | {acc:.3f} | "
                             + (f"{used} / {discarded} |" if r["draft_ahead"] and r["k"] else
                                "– |"))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
