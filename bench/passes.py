"""What a pass through specdec's engines costs against a bare Hugging Face forward.

python -m bench.passes [--threads 1] [--repeats 30] [--out results/bench_passes.json]

Models are built from configs with fixed seeds (random weights; timing does not depend on
them), float32, on the CPU. Two measurements, each the fastest of --repeats calls:

1. overhead: the tiny model (2 layers x 64 wide); a 1-token step through DraftEngine.propose
   (one session, or 8 in one call, after rolling back the last) against a bare forward of
   the same model on the same inputs (1 token per row on a DynamicCache of the same length,
   all rows alike), called in turn.
2. context: a TargetEngine verify of 8 sessions at K=4 on a 4-layer 256-wide model, with
   10-token and 450-token contexts (sessions opened anew for each call), and the ratio.

Only the engines' public calls are used (open, propose, verify, truncate), so the same
command measures any version of the engine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache, Qwen2Config

from specdec.draft_engine import DraftEngine, ProposeItem
from specdec.models import LoadedModel
from specdec.target_engine import TargetEngine, VerifyItem

VOCAB = 512


def model(layers: int, width: int, seed: int = 0) -> LoadedModel:
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return LoadedModel(name=f"{layers}x{width}", model=m, tokenizer=None, dtype=torch.float32,
                       device=torch.device("cpu"), vocab_size=VOCAB, quantization="none",
                       max_context_length=1024, eos_token_ids=(), tokenizer_fingerprint="",
                       head_ids=None)


def fastest_ms(fns, repeats: int) -> list[float]:
    """Fastest of `repeats` calls of each of fns in milliseconds, called in turn (on a
    shared, loaded machine the fastest call is the steadiest figure, and load falls on
    all of them alike)."""
    for fn in fns:
        for _ in range(3):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [min(ts) * 1e3 for ts in times]


def prompts(n: int, length: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(length)
    return [torch.randint(1, VOCAB, (length,), generator=gen).tolist() for _ in range(n)]


@torch.inference_mode()
def bare_step(lm: LoadedModel, rows: list[list[int]]):
    """A 1-token forward per row on a DynamicCache of the rows' prompts (all alike)."""
    ids = torch.tensor([r[:-1] for r in rows])
    cache = DynamicCache(config=lm.model.config)
    lm.model(input_ids=ids, past_key_values=cache, use_cache=True)
    last = torch.tensor([[r[-1]] for r in rows])

    @torch.inference_mode()
    def step():
        lm.model(input_ids=last, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)
    return step


def engine_step(lm: LoadedModel, rows: list[list[int]]):
    engine = DraftEngine(lm, len(rows), 1e6, 8)
    positions = {engine.open(f"s{i}", r)[0]: len(r) for i, r in enumerate(rows)}

    def step():
        for sid, pos in positions.items():  # the last step's token (none at first)
            engine.truncate(sid, len(engine.sessions.get(sid).tokens), pos)
        engine.propose([ProposeItem(sid, pos, None, [], 1) for sid, pos in positions.items()])
    return step


def verify_ms(lm: LoadedModel, sessions: int, context: int, k: int, repeats: int) -> float:
    """Fastest time of one verify of `sessions` fresh sessions (opened anew before each
    timed call, untimed) with k draft tokens each."""
    engine = TargetEngine(lm, sessions, 1e6, 8, max_batch_items=sessions)
    drafts = prompts(sessions, k)
    times = []
    for n in range(repeats + 3):
        items = [VerifyItem(engine.open(f"r{n}s{i}", r)[0], context, d)
                 for i, (r, d) in enumerate(zip(prompts(sessions, context), drafts,
                                                strict=True))]
        start = time.perf_counter()
        engine.verify(items)
        times.append(time.perf_counter() - start)
        engine.close_many([it.session_id for it in items])
    return min(times[3:]) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.passes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--context", type=int, default=300, help="tokens per row in the overhead test")
    p.add_argument("--out", default="results/bench_passes.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "torch": torch.__version__, "overhead": {},
               "verify_8x_k4": {}}
    tiny = model(2, 64)
    print("| rows | bare HF forward ms | engine propose(1) ms | engine / bare |")
    print("|---|---|---|---|")
    for b in (1, 8):
        rows = prompts(b, args.context)
        bare, eng = fastest_ms([bare_step(tiny, rows), engine_step(tiny, rows)], args.repeats)
        results["overhead"][b] = {"bare_ms": bare, "engine_ms": eng}
        print(f"| {b} | {bare:.2f} | {eng:.2f} | {eng / bare:.2f}x |", flush=True)
    wide = model(4, 256)
    print("\n| context | verify of 8 sessions at K=4, ms |")
    print("|---|---|")
    for context in (10, 450):
        ms = verify_ms(wide, 8, context, 4, args.repeats)
        results["verify_8x_k4"][context] = ms
        print(f"| {context} | {ms:.2f} |", flush=True)
    ratio = results["verify_8x_k4"][450] / results["verify_8x_k4"][10]
    results["verify_ratio_450_over_10"] = ratio
    print(f"450 / 10 tokens: {ratio:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
