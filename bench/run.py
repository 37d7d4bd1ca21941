"""make bench / make bench-quick: specdec vs target-only (K=0 through the same services) vs
Hugging Face assisted generation, over K x temperature x prompt domain.

python -m bench.run [--quick] [--pair NAME | --draft M --target M] [--dtype bfloat16]
                    [--ks 1,2,3,4,6,8] [--temps 0,0.7,1.0] [--domains code,chat,summarization]
                    [--prompts 1] [--repeats 1] [--max-new-tokens 128] [--threads 2]
                    [--no-peer] [--llama-cpp [DIR]] [--schedule pipelined] [--draft-ahead]

--domains spec-bench: Spec-Bench's six categories (bench/specbench.py), --prompts questions
each, evenly spaced through the category; its table gives per-category speedup and mean
accepted tokens per round, as its leaderboard does.

For every (domain, prompt, temperature) the K=0 baseline runs first and each K right after,
on the same running services, so ratios are measured side by side (a multi-turn question's
later turns carry K=0's answers, so every K sees the same context). Greedy K>0 outputs are
compared with K=0 token for token; a mismatch is printed and recorded. --repeats N runs the
whole sweep N times; each record then has the per-repeat speedups and their spread. Writes
under --out: bench.jsonl (one record per configuration), bench.md (tables), PNG figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from tqdm import tqdm

from bench import specbench
from bench.pairs import DEFAULT_PAIR, PAIRS
from bench.prompts import ALL_DOMAINS, DOMAINS, domain_conversations
from bench.stats import speedup, spread, summarize
from coordinator.client import stats_dict
from specdec.config import QUANTIZATIONS, default_cache_dir
from specdec.fetch import hub_reachable, resolve_model_dir
from specdec.launch import start_local_stack
from specdec.models import load_tokenizer
from specdec.v1 import generator_pb2, generator_pb2_grpc


@dataclass(frozen=True)
class Plan:
    ks: list[str]  # "4": fixed K; "a8": adaptive K up to 8
    temps: list[float]
    domains: list[str]
    prompts: int
    max_new_tokens: int
    peer: bool
    top_p: float = 1.0
    repeats: int = 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run (~3 minutes)")
    p.add_argument("--pair", default=DEFAULT_PAIR, choices=sorted(PAIRS))
    p.add_argument("--draft", help="draft model (overrides --pair)")
    p.add_argument("--target", help="target model (overrides --pair)")
    p.add_argument("--dtype", help="both models' dtype (default: the pair's)")
    p.add_argument("--draft-dtype", help="the draft's dtype, when it differs")
    p.add_argument("--draft-quantization", choices=list(QUANTIZATIONS),
                   help="the draft service's --quantization (weight-only; default: the pair's, "
                        "int4 for the Qwen pair)")
    p.add_argument("--target-quantization", default="none", choices=list(QUANTIZATIONS),
                   help="the target service's --quantization (weight-only)")
    p.add_argument("--draft-min-confidence", type=float, default=0.0,
                   help="the draft service's --min-confidence (early stop of a round)")
    p.add_argument("--draft-proposer", default="model", choices=["model", "ngram", "ngram+model"],
                   help="the draft service's --proposer")
    p.add_argument("--draft-vocab", default="",
                   help="the draft service's --draft-vocab (restricted head: N or a JSON file)")
    p.add_argument("--ks", default="1,2,3,4,6,8,a8",
                   help="K values: N = fixed K (adaptive_k=false); aN = adaptive K up to N")
    p.add_argument("--temps", default="0,0.7,1.0")
    p.add_argument("--top-p", type=float, default=1.0, help="top_p for sampled rows")
    p.add_argument("--domains", default=",".join(DOMAINS),
                   help=f"comma-separated, from {', '.join(ALL_DOMAINS)}; spec-bench = its "
                        "six categories")
    p.add_argument("--prompts", type=int, default=1, help="prompts per domain")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the whole sweep this many times (Spec-Bench reports the mean of "
                        "3); records carry each repeat's speedup and their spread")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch threads per service and peer")
    p.add_argument("--no-peer", action="store_true", help="skip Hugging Face assisted generation")
    p.add_argument("--llama-cpp", nargs="?", const="", default=None, metavar="DIR",
                   help="also run llama.cpp on the pair's GGUF files, greedy: its binaries in "
                        "DIR, else $LLAMA_CPP_DIR or the PATH (bench/get-llama-cpp.sh builds "
                        "them); skipped with a message when not found")
    p.add_argument("--schedule", default="lockstep", choices=["lockstep", "pipelined"],
                   help="the coordinator's --schedule")
    p.add_argument("--draft-ahead", action="store_true",
                   help="the coordinator drafts the next round during each verify (implies "
                        "--schedule pipelined)")
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    args = p.parse_args(argv)
    if args.quick:
        plan = Plan(["4"], [0.0, 0.7], list(DOMAINS), 1, 32, not args.no_peer)
    else:
        domains = specbench.expand(args.domains.split(","))
        unknown = [d for d in domains if d not in ALL_DOMAINS]
        if unknown:
            p.error(f"--domains: unknown {unknown}; choose from {', '.join(ALL_DOMAINS)} or "
                    "spec-bench")
        # K=0 is every comparison's baseline and always runs: "0" in --ks adds nothing
        plan = Plan([parse_k(k) for k in args.ks.split(",") if k != "0"],
                    [float(t) for t in args.temps.split(",")], domains, args.prompts,
                    args.max_new_tokens, not args.no_peer, args.top_p, max(1, args.repeats))
    return args, plan


def parse_k(text: str) -> str:
    """A --ks entry: "N" (fixed) or "aN" (adaptive up to N)."""
    if not text.removeprefix("a").isdigit() or text == "a0":
        raise SystemExit(f"--ks: {text!r} is neither N (a fixed K) nor aN (adaptive up to N)")
    return text


def format_prompt(tokenizer, domain: str, text: str | list[dict]) -> str:
    """Every prompt but code goes through the target's chat template when it has one
    (instruction-tuned models expect it); code prompts are completed as they are. text: one
    user message, or a conversation's messages."""
    messages = [{"role": "user", "content": text}] if isinstance(text, str) else text
    if domain == "code" or not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(m["content"] for m in messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def run_specdec(stub, prompt: str, k: str, temp: float, top_p: float, seed: int,
                max_new: int) -> dict:
    """k: "N" (fixed K) or "aN" (adaptive up to N)."""
    req = generator_pb2.GenerateRequest(
        prompt=prompt, max_new_tokens=max_new, num_speculative_tokens=int(k.removeprefix("a")),
        adaptive_k=k.startswith("a"), temperature=temp, seed=seed)
    if temp > 0 and top_p < 1:
        req.top_p = top_p
    ids, times, stats = [], [], None
    start = time.perf_counter()
    for msg in stub.Generate(req, timeout=3600):
        if msg.HasField("token"):
            ids.append(msg.token.id)
            times.append(time.perf_counter() - start)
        else:
            stats = stats_dict(msg.stats)
    total = time.perf_counter() - start
    return {"ids": ids, "tokens": len(ids), "total_s": total,
            "ttft_s": times[0] if times else total, "token_times": times, "stats": stats}


def record_base(args, plan: Plan, draft: str, target: str, dtype: str) -> dict:
    import transformers
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "draft": draft, "target": target,
            "dtype": dtype, "draft_dtype": args.draft_dtype or dtype, "threads": args.threads,
            "draft_quantization": args.draft_quantization,
            "target_quantization": args.target_quantization,
            "draft_min_confidence": args.draft_min_confidence,
            "draft_proposer": args.draft_proposer, "draft_vocab": args.draft_vocab,
            "schedule": "pipelined" if args.draft_ahead else args.schedule,
            "draft_ahead": args.draft_ahead,
            "max_new_tokens": plan.max_new_tokens, "machine": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "grpcio": grpc.__version__, "python": platform.python_version()}}


def sweep(addr: str, tokenizer, plan: Plan, base: dict, out) -> list[dict]:
    """Run every configuration; returns the records (also appended to `out`)."""
    convs = {d: domain_conversations(d, plan.prompts) for d in plan.domains}
    work = [(rep, d, i, t) for rep in range(plan.repeats) for d in plan.domains
            for i in range(len(convs[d])) for t in plan.temps]
    turns = sum(len(convs[d][i]) for _, d, i, _ in work)
    runs: dict[tuple, list[dict]] = {}
    mismatches = []
    with grpc.insecure_channel(addr) as channel, \
            tqdm(total=turns * (1 + len(plan.ks)), desc="specdec", unit="run") as bar:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        for rep, domain, i, temp in work:
            seed, history = 1000 + i, []
            for turn in convs[domain][i]:
                history.append({"role": "user", "content": turn})
                prompt = format_prompt(tokenizer, domain, history)
                base_run = run_specdec(stub, prompt, "0", temp, plan.top_p, seed,
                                       plan.max_new_tokens)
                extra = {"repeat": rep, "prompt": prompt, "seed": seed}
                runs.setdefault((domain, temp, "0"), []).append({**base_run, **extra})
                bar.update()
                for k in plan.ks:
                    r = run_specdec(stub, prompt, k, temp, plan.top_p, seed,
                                    plan.max_new_tokens) | extra
                    if temp == 0:
                        r["matches_target_only"] = r["ids"] == base_run["ids"]
                        if not r["matches_target_only"]:
                            mismatches.append((domain, i, k))
                            tqdm.write(f"!!! MISMATCH: greedy K={k} differs from K=0 on "
                                       f"{domain} prompt {i}")
                    runs.setdefault((domain, temp, k), []).append(r)
                    bar.update()
                history.append({"role": "assistant", "content": tokenizer.decode(
                    base_run["ids"], skip_special_tokens=True)})
    records = []
    for (domain, temp, k), rs in runs.items():
        rec = {**base, "system": "specdec", "domain": domain, "temperature": temp,
               "k": int(k.removeprefix("a")), "adaptive": k.startswith("a"), "k_label": k,
               **summarize(rs), "repeats": plan.repeats,
               "tokens_per_s_repeats": [summarize([r for r in rs if r["repeat"] == j])
                                        ["tokens_per_s"] for j in range(plan.repeats)],
               "runs": [{key: v for key, v in r.items() if key != "ids"} for r in rs]}
        if temp == 0 and k != "0":
            rec["greedy_mismatches"] = sum(not r["matches_target_only"] for r in rs)
        records.append(rec)
    for rec in records:
        baseline = next(r for r in records if r["domain"] == rec["domain"]
                        and r["temperature"] == rec["temperature"] and r["k"] == 0)
        rec["speedup_vs_k0"] = speedup(rec["tokens_per_s"], baseline["tokens_per_s"])
        rec["speedup_repeats"] = [speedup(a, b) for a, b in zip(
            rec["tokens_per_s_repeats"], baseline["tokens_per_s_repeats"], strict=True)]
        rec["speedup_spread"] = spread(rec["speedup_repeats"])
        out.write(json.dumps(rec) + "\n")
    if mismatches:
        print(f"!!! {len(mismatches)} greedy runs differ from target-only: {mismatches}")
    return records


def swept_prompts(records: list[dict], domain: str, temp: float) -> list[tuple[str, int]]:
    """(prompt, seed) of every turn the sweep ran for a domain and temperature (first
    repeat): the peers run exactly these."""
    k0 = next(r for r in records if r["system"] == "specdec" and r["domain"] == domain
              and r["temperature"] == temp and r["k"] == 0)
    return [(r["prompt"], r["seed"]) for r in k0["runs"] if r["repeat"] == 0]


def coordinator_flags(args) -> tuple[str, ...]:
    if args.draft_ahead:
        return ("--schedule", "pipelined", "--draft-ahead", "1")
    return ("--schedule", args.schedule)


def llamacpp_peer(args, pair, draft, target, tokenizer, plan, records, base, out) -> list:
    """llama.cpp's records, or [] with a message saying why it did not run."""
    from bench.llamacpp import find_binaries, gguf_file, run_llamacpp

    bin_dir = find_binaries(args.llama_cpp)
    if bin_dir is None:
        print("llama.cpp peer skipped: no llama-completion and llama-speculative-simple in "
              f"{args.llama_cpp or '$LLAMA_CPP_DIR or the PATH'} (bench/get-llama-cpp.sh "
              "builds them)")
        return []
    files = [gguf_file(m, default_cache_dir()) for m in (draft, target)]
    if None in files:
        print(f"llama.cpp peer skipped: no GGUF file for {draft} / {target} (it runs on the "
              "registry's GGUF pair or .gguf paths)")
        return []
    return run_llamacpp(bin_dir, *files, tokenizer, plan, records, base, out, args.threads)


def main(argv=None) -> int:
    args, plan = parse_args(argv)
    pair = PAIRS[args.pair]
    draft, target = args.draft or pair.draft, args.target or pair.target
    if pair.hub and not (args.draft and args.target) and not hub_reachable():
        print(f"--pair {args.pair} ({pair.draft} -> {pair.target}) needs the Hugging Face Hub, "
              f"which is not reachable from here. Offline: --pair {DEFAULT_PAIR}, or --draft "
              "and --target with local directories or .gguf files.", file=sys.stderr)
        return 2
    dtype = args.dtype or pair.dtype
    args.draft_quantization = args.draft_quantization or pair.draft_quantization
    torch.set_num_threads(args.threads)
    for model in (draft, target):
        resolve_model_dir(model, default_cache_dir())
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(target, default_cache_dir())
    base = record_base(args, plan, draft, target, dtype)
    print(f"specdec bench: {draft} -> {target}, {dtype}, {args.threads} threads, K {plan.ks}, "
          f"temperatures {plan.temps}, domains {plan.domains}, {plan.prompts} prompt(s) each, "
          f"{plan.max_new_tokens} new tokens", flush=True)
    stack = start_local_stack(draft, target, log_dir=args.out / "logs", dtype=dtype,
                              threads=args.threads,
                              draft_dtype=args.draft_dtype or pair.draft_dtype,
                              draft_args=("--quantization", args.draft_quantization,
                                          "--min-confidence", str(args.draft_min_confidence),
                                          "--proposer", args.draft_proposer,
                                          *(("--draft-vocab", args.draft_vocab)
                                            if args.draft_vocab else ())),
                              target_args=("--quantization", args.target_quantization),
                              coordinator_args=coordinator_flags(args))
    with (args.out / "bench.jsonl").open("w") as out:
        try:
            records = sweep(stack.addr, tokenizer, plan, base, out)
        finally:
            stack.stop()
        if plan.peer:
            from bench.peer import run_peer
            records += run_peer(draft, target, dtype, args.draft_dtype or pair.draft_dtype,
                                tokenizer, plan, records, base, out)
        if args.llama_cpp is not None:
            records += llamacpp_peer(args, pair, draft, target, tokenizer, plan, records,
                                     base, out)
    from bench.report import write_report
    write_report(records, args.out, " ".join(["python -m bench.run", *(argv or sys.argv[1:])]))
    print(f"results: {args.out}/bench.jsonl, bench.md, *.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
