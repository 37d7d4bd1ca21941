"""make bench-gpu: a one-shot GPU benchmark of the current engine (issue 28, item 5).

python -m bench.gpu [--device cuda] [--out results/bench-gpu] [--tokens 128]
                    [--phases ABCDEQ] [--e2e-model draft|target] [--time-budget-s 420]

Real-shaped models with random weights (timing does not depend on weights): a Qwen2.5-7B-
shaped target and a Qwen2.5-0.5B-shaped draft, bf16, built directly on the GPU (or --target /
--draft DIR: a real model on disk). Phases, each with its share of --time-budget-s:
  A  per-pass ms through specdec's engines: DraftEngine Propose (per step), TargetEngine
     verify of 1, 2, 3, 5, 9 rows, at 1 and 8 sessions; and bare HF forwards of the same;
     on CUDA with CUDA graphs (the default) and with --cuda-graphs 0 side by side
  B  target-only decoding: Hugging Face `generate` vs our TargetEngine, tokens/s
  C  expected speedup at acceptance 0.6 / 0.8, K = 2, 4, 8 (formula in the report)
  D  end to end through the three services (real gRPC processes) with draft == target
     (acceptance 1): K = 0, 2, 4; fixed cost per round; predicted vs measured tokens/s
  E  where a pass inside a service goes (bench/gpu_where.py): a 1-row verify on the calling
     thread vs the model worker thread beside an asyncio loop and a grpc.aio server; and a
     bare 1-token forward eager vs replayed from a CUDA graph
  Q  --quantization int4 on CUDA (bench/gpu_lowbit.py): the draft's 1-token step and prompt
     pass int4 vs bf16, and greedy tokens of the int4 draft vs a bf16 copy holding its own
     dequantized weights; skipped off CUDA
After every phase bench-gpu.json and bench-gpu.md are (re)written under --out. With
--device cpu the defaults are tiny shapes, so the test suite runs the same code path.
Phase D needs the services' modules (bench/gpu-wheels.sh); A-C need torch + transformers.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

import torch

from bench import gpu_models as gm

log = partial(print, flush=True)
SHARES = {"A": 0.3, "B": 0.12, "D": 0.35, "E": 0.18, "Q": 0.05}  # of --time-budget-s (C:
# instant)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--target", help=f"a shape ({', '.join(gm.SHAPES)}) or a model "
                   "directory; default: qwen2.5-7b on cuda, tiny-target on cpu")
    p.add_argument("--draft", help="as --target; default: qwen2.5-0.5b on cuda, tiny-draft")
    p.add_argument("--layers", type=int, default=0,
                   help="override both shapes' layer count (a quick shape check); 0 = real")
    p.add_argument("--out", type=Path, default=Path("results/bench-gpu"))
    p.add_argument("--tokens", type=int, default=128, help="new tokens in phases B and D")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--sessions", default="1,8", help="session counts of phase A")
    p.add_argument("--phases", default="ABCDEQ", help="a subset of ABCDEQ")
    p.add_argument("--e2e-model", choices=["draft", "target"], default="draft",
                   help="phase D's model (draft == target): the draft's shape saves and loads "
                        "in seconds; the 7B target's 15 GB take minutes")
    p.add_argument("--e2e-ks", default="0,2,4")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--time-budget-s", type=float, default=420.0)
    p.add_argument("--eager-too", choices=["auto", "0", "1"], default="auto",
                   help="phases A and B: measure the engines with --cuda-graphs 0 too, beside "
                        "the default (graphs on CUDA); auto = on CUDA")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads of this process; 0 = torch's default")
    args = p.parse_args(argv)
    cpu = args.device == "cpu"
    args.dtype = args.dtype or ("float32" if cpu else "bfloat16")
    args.target = args.target or ("tiny-target" if cpu else "qwen2.5-7b")
    args.draft = args.draft or ("tiny-draft" if cpu else "qwen2.5-0.5b")
    args.phases = args.phases.upper()
    return args


class Run:
    """The results so far, the clock, and the files rewritten after every phase."""

    def __init__(self, args, argv):
        self.args, self.start = args, time.monotonic()
        self.dev, self.dtype = torch.device(args.device), getattr(torch, args.dtype)
        args.out.mkdir(parents=True, exist_ok=True)
        import transformers
        name = (torch.cuda.get_device_name(self.dev) if self.dev.type == "cuda"
                else f"CPU ({platform.processor() or platform.machine()})")
        self.res: dict = {"meta": {
            "command": " ".join(["python -m bench.gpu", *(sys.argv[1:] if argv is None
                                                          else argv)]),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": args.device,
            "device_name": name, "dtype": args.dtype, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "target": args.target, "draft": args.draft, "layers_override": args.layers,
            "prompt_tokens": args.prompt_tokens, "tokens": args.tokens,
            "target_params": 0, "draft_params": 0, "phase_s": {}}}

    def left(self) -> float:
        return self.args.time_budget_s - (time.monotonic() - self.start)

    def budget(self, phase: str) -> float:
        return max(1.0, min(SHARES[phase] * self.args.time_budget_s, self.left()))

    def write(self) -> None:
        from bench.gpu_report import markdown
        out = self.args.out
        (out / "bench-gpu.json").write_text(json.dumps(self.res, indent=1))
        (out / "bench-gpu.md").write_text(markdown(self.res))

    def phase(self, key: str, fn) -> None:
        if key not in self.args.phases:
            return
        if self.left() <= 0:
            self.res[key] = {"error": "skipped: --time-budget-s spent"}
        else:
            log(f"== phase {key} ({self.left():.0f}s of the budget left)")
            t0 = time.monotonic()
            try:
                self.res[key] = fn()
            except Exception as e:  # keep the other phases' figures
                traceback.print_exc()
                self.res[key] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            self.res["meta"]["phase_s"][key] = round(time.monotonic() - t0, 1)
            log(f"== phase {key} done in {self.res['meta']['phase_s'][key]}s")
        self.write()


def graph_note(stats: dict | None) -> str:
    if not stats:
        return "none (not on CUDA, or --cuda-graphs 0)"
    if stats.get("failure"):
        return f"OFF after a failure: {stats['failure']}"
    return (f"{stats['captures']} captured, {stats['replays']} replays, "
            f"{stats['graph_bytes'] / 2**20:.0f} MiB")


def engine_costs_or_eager(engine_costs, lm, prompt, n, graphs: bool, **kw) -> dict:
    """engine_costs; if it raises with graphs on, the eager figures with the error noted
    (a failed capture falls back by itself; this catches anything else)."""
    try:
        return engine_costs(lm, prompt, n, cuda_graphs=graphs, **kw)
    except Exception as e:
        if not graphs:
            raise
        traceback.print_exc()
        out = engine_costs(lm, prompt, n, cuda_graphs=False, **kw)
        out["graphs_error"] = f"{type(e).__name__}: {e}"[:500]
        return out


def main(argv=None) -> int:
    args = parse_args(argv)
    stubbed = gm.stub_missing_modules()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Run(args, argv)
    m = run.res["meta"]
    log(f"bench.gpu on {m['device_name']}: torch {m['torch']}, transformers "
        f"{m['transformers']}, {args.dtype}; stand-ins for missing {stubbed or 'nothing'}")
    models: dict = {}

    def model(role: str):
        if role not in models:
            t0 = time.monotonic()
            spec = getattr(args, role)
            models[role] = gm.build_model(spec, run.dev, run.dtype, args.layers,
                                          seed=1 if role == "target" else 2)
            m[f"{role}_params"] = gm.param_count(models[role])
            log(f"  built {role} {spec}: {m[f'{role}_params'] / 1e9:.2f} B params in "
                f"{time.monotonic() - t0:.1f}s")
        return models[role]

    sessions = [int(s) for s in args.sessions.split(",")]
    eager_too = args.eager_too == "1" or (args.eager_too == "auto" and run.dev.type == "cuda")
    m["cuda_graphs_compared"] = eager_too
    prompt = {role: None for role in ("draft", "target")}

    def ids(role):
        if prompt[role] is None:
            vocab = model(role).get_output_embeddings().weight.shape[0]
            prompt[role] = gm.prompt_ids(args.prompt_tokens, vocab)
        return prompt[role]

    def phase_a():
        from bench.gpu_timing import bare_costs, engine_costs
        out: dict = {}
        variants = [("engine", True)] + ([("engine_eager", False)] if eager_too else [])
        each = run.budget("A") / ((len(variants) + 1) * len(sessions) * 2)
        kw = dict(warmup=args.warmup, repeats=args.repeats, budget_s=each)
        for role in ("target", "draft"):
            lm = gm.loaded(model(role), role)
            out[role] = {name: {} for name, _ in variants} | {"bare": {}}
            for n in sessions:
                for name, graphs in variants:
                    out[role][name][str(n)] = engine_costs_or_eager(
                        engine_costs, lm, ids(role), n, graphs, **kw)
                e = out[role]["engine"][str(n)]
                b = out[role]["bare"][str(n)] = bare_costs(lm.model, ids(role), n, **kw)
                log(f"  A: {role} x{n}: step {e['draft_step_ms']:.2f} ms, verify 1/5/9 rows "
                    f"{e['verify_1']['ms']:.2f}/{e['verify_5']['ms']:.2f}/"
                    f"{e['verify_9']['ms']:.2f} ms (bare {b['forward_1']['ms']:.2f}/"
                    f"{b['forward_5']['ms']:.2f}/{b['forward_9']['ms']:.2f})")
                if eager_too:
                    g = out[role]["engine_eager"][str(n)]
                    log(f"  A: {role} x{n} --cuda-graphs 0: step {g['draft_step_ms']:.2f} ms, "
                        f"verify 1/5/9 rows {g['verify_1']['ms']:.2f}/{g['verify_5']['ms']:.2f}/"
                        f"{g['verify_9']['ms']:.2f} ms; graphs: "
                        f"{graph_note(e.get('target_graphs'))}")
        return out

    def phase_b():
        from bench.gpu_timing import engine_target_only, hf_generate
        runs = 2 if run.budget("B") > 20 else 1
        target = model("target")
        hf = hf_generate(target, ids("target"), args.tokens, runs)
        log(f"  B: HF generate {hf['tokens_per_s']:.1f} tok/s")
        lm = gm.loaded(target, "target")
        out = {"hf_generate": hf}
        if eager_too:
            out["engine_target_only_eager"] = engine_target_only(lm, ids("target"), args.tokens,
                                                                 runs, cuda_graphs=False)
            log(f"  B: our engine target-only, --cuda-graphs 0: "
                f"{out['engine_target_only_eager']['tokens_per_s']:.1f} tok/s")
        try:
            ours = engine_target_only(lm, ids("target"), args.tokens, runs)
        except Exception as e:  # (graphs on: keep the eager figure as ours)
            traceback.print_exc()
            if not eager_too:
                raise
            ours = dict(out["engine_target_only_eager"], error=f"{type(e).__name__}: {e}"[:500])
        log(f"  B: our engine target-only {ours['tokens_per_s']:.1f} tok/s; graphs: "
            f"{graph_note(ours.get('graphs'))}")
        out["engine_target_only"] = ours
        out["ratio"] = round(ours["tokens_per_s"] / hf["tokens_per_s"], 3)
        return out

    def phase_c():
        from bench.gpu_report import speedup_table
        a = run.res.get("A") or {}
        if "engine" not in a.get("target", {}):
            raise RuntimeError("phase C needs phase A's figures")
        d = run.res.get("D") or {}
        k4 = next((r for r in d.get("runs", []) if r["k"] == 4), None)
        c = {"engine_only": speedup_table(a["draft"]["engine"], a["target"]["engine"], {}),
             "fixed_note": "0 (phase D has not measured it)"}
        if k4:
            c["with_fixed"] = speedup_table(a["draft"]["engine"], a["target"]["engine"],
                                            {"1": k4["fixed_ms_per_round"]})
            c["fixed_note"] = (f"{k4['fixed_ms_per_round']:.2f} ms (phase D, K=4, 1 session; "
                               "rows for more sessions: 0)")
        return c

    def phase_e():
        from bench.gpu_where import graph_step, loaded_pass, where_pass
        each = run.budget("E") / 6
        kw = dict(warmup=args.warmup, repeats=args.repeats, budget_s=each)
        out: dict = {}
        for role in ("draft", "target"):
            w = where_pass(gm.loaded(model(role), role), ids(role), **kw)
            if role == "draft":  # (the target's 15 GB would take minutes to write)
                lp = loaded_pass(model(role), ids(role), **kw)
                w["loaded_calling_thread"] = lp["calling_thread"]
                log(f"  E: loaded through load_model: {lp}")
            out[role] = {"where": w}
            log(f"  E: {role}: 1-row verify " + ", ".join(
                f"{k} {(v.get('pass') or v)['ms']:.2f}" for k, v in w.items()) + " ms")
            run.res["E"] = out
            run.write()
        for role in ("draft", "target"):  # last: a failed capture can poison the context
            try:
                g = graph_step(model(role), ids(role), repeats=args.repeats, budget_s=each)
            except Exception as e:
                traceback.print_exc()
                g = {"error": f"{type(e).__name__}: {e}"[:500]}
            out[role]["graph"] = g
            log(f"  E: {role}: bare step " + (f"eager {g['eager']['ms']:.2f} / graph "
                f"{g['graph']['ms']:.2f} ms" if "graph" in g else str(g)))
        return out

    def phase_d():
        from bench.gpu_e2e import missing_modules, run_e2e
        missing = missing_modules(stubbed)
        if missing:
            msg = f"missing {', '.join(missing)} (install bench/gpu-wheels.sh's wheels)"
            log(f"phase D skipped: {msg}")
            return {"skipped": msg}
        budget, role = run.budget("D"), args.e2e_model
        a_costs = ((run.res.get("A") or {}).get(role, {}).get("engine", {}).get("1"))
        text = gm.prompt_text(args.prompt_tokens)
        with tempfile.TemporaryDirectory(prefix="bench-gpu-model-") as tmp:
            t0 = time.monotonic()
            gm.save_model_dir(model(role), Path(tmp))
            log(f"  D: saved the {role} ({getattr(args, role)}) in {time.monotonic() - t0:.1f}s")
            models.clear()  # the services load their own copies
            gc.collect()
            if run.dev.type == "cuda":
                torch.cuda.empty_cache()
            d = run_e2e(Path(tmp), getattr(args, role), device=args.device, dtype=args.dtype,
                        prompt=text, tokens=args.tokens,
                        ks=tuple(int(k) for k in args.e2e_ks.split(",")), costs=a_costs,
                        out=args.out, timeout_s=budget - (time.monotonic() - t0), log=log)
        c = run.res.get("C") or {}
        k4 = next((r for r in d["runs"] if r["k"] == 4), None)
        pair = next((r for r in c.get("engine_only", []) if r["sessions"] == "1"
                     and r["k"] == 4 and r["alpha"] == 0.8), None)
        if k4 and pair:
            fixed = k4["fixed_ms_per_round"]
            d["fixed_share_of_pair_round"] = round(fixed / (pair["round_ms"] + fixed), 4)
        return d

    def phase_q():
        if run.dev.type != "cuda" or run.dtype != torch.bfloat16:
            return {"skipped": "int4 runs on CUDA in bf16 only (specdec.quantize_cuda); the "
                               "CPU kernels are measured by make bench and bench.rows"}
        from bench.gpu_lowbit import lowbit_check
        draft = model("draft")
        prompt_ids = ids("draft")
        models.pop("draft")  # quantized in place: later phases would build it again
        q = lowbit_check(draft, prompt_ids, warmup=args.warmup, repeats=args.repeats,
                         budget_s=run.budget("Q"))
        a = ((run.res.get("A") or {}).get("draft", {}).get("engine", {}).get("1") or {})
        q["engine_bf16_draft_step_ms"] = a.get("draft_step_ms")  # (phase A's, if it ran)
        g = q["greedy_vs_dequantized"]
        log(f"  Q: draft 1-token step bf16 {q['bf16']['step_1']['ms']:.2f} ms, int4 "
            f"{q['int4']['step_1']['ms']:.2f} ms (engine: bf16 {a.get('draft_step_ms')}, int4 "
            f"{q['engine_int4']}); greedy tokens same as its dequantized "
            f"weights: {g['same']}/{g['tokens']}; prompt logits max |diff| "
            f"{g['prompt_logits_max_abs_diff']} (std {g['prompt_logits_std']})")
        return q

    for key, fn in (("A", phase_a), ("B", phase_b), ("C", phase_c), ("D", phase_d),
                    ("E", phase_e), ("Q", phase_q)):
        run.phase(key, fn)
    if "D" in args.phases and "C" in args.phases and "error" not in run.res.get("D", {}):
        run.phase("C", phase_c)  # again, with the fixed cost D measured
    log(f"total {time.monotonic() - run.start:.0f}s; results: {args.out}/bench-gpu.json, "
        "bench-gpu.md\n")
    log((args.out / "bench-gpu.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
