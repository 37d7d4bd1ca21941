"""bench.gpu's expected-speedup model (phase C) and its markdown report."""

from __future__ import annotations

ALPHAS = (0.6, 0.8)
KS = (2, 4, 8)
FORMULA = ("E[tokens/round] = (1 - a^(K+1)) / (1 - a) (K + 1 when a = 1); round = K * "
           "t_draft_step + t_verify(K+1 rows) + fixed; speedup = E / round * t_target_only, "
           "t_target_only = t_verify(1 row) (the same target engine with no proposals)")


def expected_tokens(alpha: float, k: int) -> float:
    return k + 1.0 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def round_ms(draft: dict, target: dict, k: int, fixed_ms: float) -> float:
    """draft, target: engine_costs() of the draft and the target model at one load."""
    return k * draft["draft_step_ms"] + target[f"verify_{k + 1}"]["ms"] + fixed_ms


def speedup_table(draft_costs: dict, target_costs: dict, fixed_ms: dict) -> list[dict]:
    """Rows for every sessions count, alpha and K. fixed_ms: {sessions: fixed cost per round}
    (0 where none was measured)."""
    rows = []
    for sessions, target in target_costs.items():
        draft = draft_costs[sessions]
        base = target["verify_1"]["ms"]
        fixed = fixed_ms.get(sessions, 0.0)
        for alpha in ALPHAS:
            for k in KS:
                e = expected_tokens(alpha, k)
                t = round_ms(draft, target, k, fixed)
                rows.append({"sessions": sessions, "alpha": alpha, "k": k,
                             "expected_tokens": round(e, 4), "round_ms": round(t, 3),
                             "fixed_ms": round(fixed, 3), "fixed_share": round(fixed / t, 4),
                             "speedup": round(e / t * base, 3)})
    return rows


def _num(v, digits=2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _goal(ok) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def goals(res: dict) -> list[tuple[str, str, str]]:
    b, c, d = res.get("B") or {}, res.get("C") or {}, res.get("D") or {}
    ours, hf = (b.get("engine_target_only") or {}), (b.get("hf_generate") or {})
    ratio = (ours["tokens_per_s"] / hf["tokens_per_s"]) if ours and hf else None
    row = next((r for r in c.get("with_fixed") or c.get("engine_only") or []
                if r["sessions"] == "1" and r["k"] == 4 and r["alpha"] == 0.8), None)
    fixed_share = d.get("fixed_share_of_pair_round")
    check = next((r for r in d.get("runs", []) if r.get("k") == 4), None)
    err = check.get("predicted_error") if check else None
    return [
        ("our target-only tokens/s vs HF generate", _num(ratio) + "x",
         _goal(None if ratio is None else ratio >= 1)),
        ("fixed cost < 10% of a round (K=4, 1 session)", _num(fixed_share and
                                                             fixed_share * 100, 1) + "%",
         _goal(None if fixed_share is None else fixed_share < 0.10)),
        ("predicted speedup >= 1.8x at a=0.8, K=4, 1 session"
         + ("" if c.get("with_fixed") else " (no fixed cost)"),
         _num(row and row["speedup"]) + "x", _goal(None if row is None else row["speedup"] >= 1.8)),
        ("predicted vs measured tokens/s within 10% (draft == target, K=4)",
         _num(err and err * 100, 1) + "%", _goal(None if err is None else abs(err) <= 0.10)),
    ]


def markdown(res: dict) -> str:
    m = res["meta"]
    out = [f"# bench.gpu — {m['device_name']}", "",
           f"`{m['command']}`  ", f"{m['time']}; torch {m['torch']}, transformers "
           f"{m['transformers']}, {m['dtype']}; prompt {m['prompt_tokens']} tokens; target "
           f"{m['target']} ({m['target_params']/1e9:.2f} B params), draft {m['draft']} "
           f"({m['draft_params']/1e9:.2f} B params); random weights. Engines as served: CUDA "
           "graphs on CUDA (--cuda-graphs 1, the default)" + (
               "; --cuda-graphs 0 beside them" if m.get("cuda_graphs_compared") else "")
           + ".", "", "## Goals", "", "| goal | value | |", "|---|---|---|"]
    out += [f"| {g} | {v} | {s} |" for g, v, s in goals(res)]
    a = res.get("A")
    if a and "error" not in a:
        out += ["", "## A. Per-pass ms through the engines (median) vs bare HF forward", "",
                "| model | op | 1 session | 8 sessions | bare HF 1 | bare HF 8 |",
                "|---|---|---|---|---|---|"]
        for role in [r for r in ("draft", "target") if r in a]:
            eng, bare = a[role]["engine"], a[role].get("bare", {})
            for op in ["propose_1", "propose_4"] + [k for k in eng["1"] if k.startswith("v")]:
                fw = "forward_" + op.split("_")[1] if op.startswith("verify") else None
                cells = [_num(eng.get(s, {}).get(op, {}).get("ms")) for s in ("1", "8")]
                cells += [_num(bare.get(s, {}).get(fw, {}).get("ms")) if fw else "" for s in
                          ("1", "8")]
                out.append(f"| {role} | {op} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("draft step (Propose of 4 / 4): " + ", ".join(
            f"{s} session(s) {_num(a['draft']['engine'][s]['draft_step_ms'])} ms"
            for s in a.get("draft", {}).get("engine", {})))
        out += graphs_section(a)
    b = res.get("B")
    if b and "error" not in b:
        out += ["", "## B. Target-only decoding, 1 session", "", "| system | tokens | s | "
                "tokens/s |", "|---|---|---|---|"]
        for name in ("hf_generate", "engine_target_only", "engine_target_only_eager"):
            r = b.get(name)
            if r:
                out.append(f"| {name} | {r['tokens']} | {r['s']} | {r['tokens_per_s']} |")
    c = res.get("C")
    if c and "error" not in c:
        table = c.get("with_fixed") or c["engine_only"]
        out += ["", "## C. Expected speedup over target-only", "", f"{FORMULA}.", "",
                f"fixed cost per round: {c['fixed_note']}", "",
                "| sessions | a | K | E[tokens/round] | round ms | fixed share | speedup |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['sessions']} | {r['alpha']} | {r['k']} | {r['expected_tokens']:.2f} | "
                f"{r['round_ms']:.2f} | {r['fixed_share']*100:.1f}% | {r['speedup']:.2f}x |"
                for r in table]
    d = res.get("D")
    if d and "error" not in d:
        out += ["", "## D. End to end through the three services, draft == target", ""]
        if d.get("skipped"):
            out.append(f"skipped: {d['skipped']}")
        else:
            out += [f"model {d['model']}, {d['tokens']} new tokens, greedy, 1 session, fixed "
                    f"K (adaptive off), lockstep. Predicted = phase A's costs of this model "
                    f"+ the fixed cost per round measured on the run named in `fixed from`.",
                    "", "| K | tokens | rounds | acceptance | measured tok/s | predicted tok/s"
                    " | error | forward ms/round | fixed ms/round | fixed from |",
                    "|---|---|---|---|---|---|---|---|---|---|"]
            for r in d["runs"]:
                out.append(
                    f"| {r['k']} | {r['generated_tokens']} | {r['rounds']} | "
                    f"{r['acceptance_rate']:.3f} | {r['tokens_per_s']:.1f} | "
                    f"{_num(r.get('predicted_tokens_per_s'), 1)} | "
                    f"{_num(r.get('predicted_error') and r['predicted_error'] * 100, 1)}% | "
                    f"{r['forward_ms_per_round']:.2f} | {r['fixed_ms_per_round']:.2f} | "
                    f"{r.get('fixed_from', '')} |")
    out += where_section(res.get("E"))
    out += lowbit_section(res.get("Q"))
    errors = {k: v["error"] for k, v in res.items() if isinstance(v, dict) and "error" in v}
    if errors:
        out += ["", "## Errors", ""] + [f"- phase {k}: {v}" for k, v in errors.items()]
    return "\n".join(out) + "\n"


def graphs_section(a: dict) -> list[str]:
    """Phase A with CUDA graphs (the default) and with --cuda-graphs 0, side by side."""
    roles = [r for r in ("draft", "target") if "engine_eager" in a.get(r, {})]
    if not roles:
        return []
    out = ["", "### CUDA graphs on vs off (--cuda-graphs 0), median ms per pass", "",
           "| model | op | sessions | graphs | eager | eager / graphs | graphs captured, MiB |",
           "|---|---|---|---|---|---|---|"]
    for role in roles:
        for s, on in a[role]["engine"].items():
            off = a[role]["engine_eager"].get(s, {})
            stats = on.get("draft_graphs" if role == "draft" else "target_graphs") or {}
            note = (f"failed: {stats['failure']}" if stats.get("failure") else
                    f"{stats.get('captures', 0)}, {stats.get('graph_bytes', 0) / 2**20:.0f}")
            if on.get("graphs_error"):
                note = f"error: {on['graphs_error']}"
            for op in ["draft_step_ms"] + [k for k in on if k.startswith("verify_")]:
                g = on[op] if op == "draft_step_ms" else on[op]["ms"]
                e = off.get(op) if op == "draft_step_ms" else off.get(op, {}).get("ms")
                ratio = f"{e / g:.2f}x" if e and g else "n/a"
                out.append(f"| {role} | {op.removesuffix('_ms')} | {s} | {_num(g)} | {_num(e)} "
                           f"| {ratio} | {note} |")
    return out


def where_section(e: dict | None) -> list[str]:
    """Phase E: a 1-row verify's own time (and the await of it) per setting; graphs."""
    if not e or "error" in e:
        return []
    out = ["", "## E. Where a pass inside a service goes (1 session, 1-row verify, ms)", "",
           "| model | setting | pass | await from the loop |", "|---|---|---|---|"]
    for role, r in e.items():
        for name, v in r["where"].items():
            ms, wait = (v["pass"]["ms"], v["await"]["ms"]) if "pass" in v else (v["ms"], None)
            out.append(f"| {role} | {name} | {_num(ms)} | {_num(wait)} |")
    out += ["", "| model | bare 1-token step eager | from a CUDA graph | speedup |",
            "|---|---|---|---|"]
    for role, r in e.items():
        g = r.get("graph", {"error": "not measured"})
        if "graph" in g:
            out.append(f"| {role} | {_num(g['eager']['ms'])} | {_num(g['graph']['ms'])} | "
                       f"{g['speedup']}x |")
        else:
            out.append(f"| {role} | {g.get('skipped') or g.get('error')} | | |")
    return out


def lowbit_section(q: dict | None) -> list[str]:
    """Phase Q: --quantization int4 on CUDA, the draft's shape."""
    if not q or "error" in q:
        return []
    out = ["", "## Q. --quantization int4 on CUDA (draft's shape), median ms", ""]
    if q.get("skipped"):
        return out + [f"skipped: {q['skipped']}"]
    passes = [k for k in q["bf16"] if k.startswith("pass_")]
    out += ["| weights | weight MiB | 1-token step | " + " | ".join(passes) + " |",
            "|---|---|---|" + "---|" * len(passes)]
    for name in ("bf16", "int4"):
        mib = q["dense_weight_bytes" if name == "bf16" else "int4_weight_bytes"] / 2**20
        out.append(f"| {name} | {mib:.0f} | {_num(q[name]['step_1']['ms'])} | "
                   + " | ".join(_num(q[name][k]["ms"]) for k in passes) + " |")
    e = q.get("engine_int4") or {}
    stats = e.get("graphs") or {}
    out += ["", "draft step through DraftEngine as served (1 session): bf16 "
            f"{_num(q.get('engine_bf16_draft_step_ms'))} ms (phase A), int4 "
            + (f"{_num(e['draft_step_ms'])} ms; CUDA graphs: "
               + (f"OFF after a failure: {stats['failure']}" if stats.get("failure") else
                  f"{stats.get('captures', 0)} captured") if "draft_step_ms" in e
               else f"error: {e.get('error')}")]
    g = q["greedy_vs_dequantized"]
    out += ["", f"quantized {q['counts']['quantized']} layers ({q['counts']['kept']} kept) in "
            f"{q['quantize_s']} s. Greedy tokens of the int4 model vs a bf16 copy holding its "
            f"dequantized weights: {g['same']}/{g['tokens']} the same (first "
            f"{g['same_prefix']} in a row); prompt logits: argmax the same on "
            f"{g['prompt_argmax_same'] * 100:.1f}% of rows, max |diff| "
            f"{g['prompt_logits_max_abs_diff']}, mean |diff| "
            f"{g['prompt_logits_mean_abs_diff']}, spread (std) {g['prompt_logits_std']}. "
            "Weights read back through the kernel vs the original bf16 ones: max error "
            f"{q['weights_vs_original_max_rel_err']} of each layer's largest weight ("
            + ("packing OK" if q["packing_ok"] else "**PACKING WRONG**") + ")."]
    return out
