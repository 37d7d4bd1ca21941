"""What a verify row costs on this machine: one weight's product at 1..16 rows in each format.

python -m bench.rows [--shape 8960x1536] [--weights 28] [--rows 1,2,3,5,9,16] [--threads 2]
                     [--formats bfloat16,float32,int8,int4,fp16] [--out results/bench_rows.json]

Speculation pays only where a pass of K+1 rows costs about one of 1 row (the target streams
its weights once for all rows). This times `--weights` distinct weights of the 1.5B target's
MLP shape in turn (together larger than the caches, as in a real pass), each format through
specdec's own layers (specdec/quantize.py for int8/int4: the low-bit kernels; activations
bf16; specdec/fp16_weights.py for fp16: fbgemm, activations float32), and prints
milliseconds per weight and the ratio to 1 row. On an AVX-512-BF16 host a 5-row bf16
product costs ~1.1x one row; on an AVX2-only host ~3.8x, and fp16 there ~1.2-1.4x
(docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

from specdec.fp16_weights import Fp16Linear
from specdec.quantize import Int4Linear, Int8Linear, fastest_pass, int4_group_size


def products(fmt: str, weights: list[torch.nn.Linear]):
    """(activation dtype, one callable per weight) for a format."""
    if fmt == "int8":
        return torch.bfloat16, [Int8Linear(w).low_bit for w in weights]
    if fmt == "int4":
        group = int4_group_size(weights[0].in_features)
        return torch.bfloat16, [Int4Linear(w, group).low_bit for w in weights]
    if fmt == "fp16":  # fbgemm: fp16 weights, float32 activations (specdec.fp16_weights)
        return torch.float32, [Fp16Linear(w) for w in weights]
    dtype = getattr(torch, fmt)
    return dtype, [lambda x, w=w.weight.to(dtype): F.linear(x, w) for w in weights]


def milliseconds(fns, rows: int, in_features: int, dtype: torch.dtype, repeats: int = 3) -> float:
    """Best of `repeats` passes over every weight, per weight."""
    x = torch.randn(rows, in_features).to(dtype)
    return fastest_pass([functools.partial(fn, x) for fn in fns], repeats) / len(fns) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.rows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="8960x1536", help="out x in features of each weight")
    p.add_argument("--weights", type=int, default=28)
    p.add_argument("--rows", default="1,2,3,5,9,16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--formats", default="bfloat16,float32,int8,int4,fp16")
    p.add_argument("--out", default="results/bench_rows.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out_f, in_f = (int(n) for n in args.shape.split("x"))
    rows = [int(r) for r in args.rows.split(",")]
    weights = [torch.nn.Linear(in_f, out_f, bias=False).to(torch.bfloat16)
               for _ in range(args.weights)]
    results = {}
    print(f"ms per {args.shape} weight (x its 1-row cost), {args.threads} threads, "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| format | " + " | ".join(f"{r} rows" for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for fmt in args.formats.split(","):
        dtype, fns = products(fmt, weights)
        ms = [milliseconds(fns, r, in_f, dtype) for r in rows]
        results[fmt] = dict(zip(rows, ms, strict=True))
        print(f"| {fmt} | " + " | ".join(f"{m:.2f} ({m / ms[0]:.2f}x)" for m in ms) + " |",
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "shape": args.shape, "weights": args.weights, "threads": args.threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.platform(), "torch": torch.__version__,
        "ms_per_weight": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
