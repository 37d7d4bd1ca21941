"""Markdown tables and PNG figures from the bench records."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _fmt(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _k(r) -> str:
    """How a record's K reads in tables: "4", or "≤8 adaptive"."""
    return f"≤{r['k']} adaptive" if r.get("adaptive") else str(r["k"])


def _order(r) -> tuple:
    return r["k"], bool(r.get("adaptive"))


def _specdec(records, domain=None, temp=None):
    return [r for r in records if r["system"] == "specdec"
            and (domain is None or r["domain"] == domain)
            and (temp is None or r["temperature"] == temp)]


def best_table(records: list[dict]) -> str:
    """Best speedup vs K=0 and vs the HF peer per domain, at each temperature."""
    lines = ["| domain | temperature | best K | tokens/s | × vs K=0 | acceptance | "
             "HF assisted tokens/s | × vs HF assisted | HF target-only tokens/s | "
             "× vs HF target-only |", "|---|---|---|---|---|---|---|---|---|---|"]
    for domain in dict.fromkeys(r["domain"] for r in records):
        for temp in sorted({r["temperature"] for r in _specdec(records, domain)}):
            rows = [r for r in _specdec(records, domain, temp) if r["k"] > 0]
            if not rows:
                continue
            best = max(rows, key=lambda r: r["tokens_per_s"])
            peer = {r["system"]: r for r in records if r["system"].startswith("hf_")
                    and r["domain"] == domain and r["temperature"] == temp}
            assisted, plain = peer.get("hf_assisted"), peer.get("hf_target_only")
            lines.append(
                f"| {domain} | {temp:g} | {_k(best)} | {_fmt(best['tokens_per_s'])} | "
                f"**{_fmt(best['speedup_vs_k0'])}** | {_fmt(best.get('acceptance_rate'), 3)} | "
                f"{_fmt(assisted and assisted['tokens_per_s'])} | "
                f"{_fmt(assisted and assisted['specdec_speedup_vs_this'])} | "
                f"{_fmt(plain and plain['tokens_per_s'])} | "
                f"{_fmt(plain and plain['specdec_speedup_vs_this'])} |")
    return "\n".join(lines) + "\n"


def llamacpp_table(records: list[dict]) -> str:
    """llama.cpp's runs (same GGUF pair, Q4_K_M as is) next to specdec's, greedy; "" when the
    llama.cpp peer did not run."""
    rows = [r for r in records if r["system"].startswith("llamacpp_")]
    if not rows:
        return ""
    lines = ["| domain | system | tokens/s | acceptance | specdec best × vs this | "
             "specdec K=0 × vs this |", "|---|---|---|---|---|---|"]
    for r in rows:
        accept = [run["acceptance_rate"] for run in r["runs"] if run.get("acceptance_rate")]
        lines.append(
            f"| {r['domain']} | {r['system'].removeprefix('llamacpp_')} (llama.cpp"
            + (f", draft-max {r['k']}, p-min {r['draft_p_min']:g}" if r["k"] else "") + ") | "
            f"{_fmt(r['tokens_per_s'])} | "
            f"{_fmt(sum(accept) / len(accept) if accept else None, 3)} | "
            f"{_fmt(r.get('specdec_speedup_vs_this'))} | "
            f"{_fmt(r.get('specdec_target_only_vs_this'))} |")
    return "\n## llama.cpp on the same GGUF pair (greedy)\n\n" + "\n".join(lines) + "\n"


def detail_table(records: list[dict]) -> str:
    lines = ["| domain | T | K | tokens/s | × vs K=0 | accept | mean acc. len | TTFT p50 s | "
             "ITL p50 / p95 / p99 ms | draft / verify / coord s | bytes/round | greedy = K=0 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(_specdec(records), key=lambda r: (r["domain"], r["temperature"], *_order(r))):
        itl = " / ".join(_fmt(r[f"itl_p{q}_s"] * 1e3, 0) for q in (50, 95, 99))
        phases = " / ".join(_fmt(r.get(k), 1) for k in ("draft_s", "verify_s", "coordinator_s"))
        same = ("" if r["temperature"] or not r["k"]
                else "yes" if not r["greedy_mismatches"] else f"**NO ({r['greedy_mismatches']})**")
        lines.append(
            f"| {r['domain']} | {r['temperature']:g} | {_k(r)} | {_fmt(r['tokens_per_s'])} | "
            f"{_fmt(r['speedup_vs_k0'])} | {_fmt(r.get('acceptance_rate'), 3)} | "
            f"{_fmt(r.get('mean_accepted_length'))} | {_fmt(r['ttft_p50_s'])} | {itl} | "
            f"{phases} | {_fmt(r.get('wire_bytes_per_round'), 0)} | {same} |")
    return "\n".join(lines) + "\n"


def spec_bench_table(records: list[dict]) -> str:
    """Spec-Bench's leaderboard layout: per category, speedup over K=0 and mean accepted
    tokens per round (the target's own token included, so K=0 is 1.00), then the overall
    speedup (all tokens over all time); "" when no spec-bench domain ran. With --repeats,
    each speedup is followed by the range of the repeats' own speedups."""
    from bench.specbench import CATEGORIES, PREFIX

    rows = [r for r in _specdec(records) if r["domain"].startswith(PREFIX)]
    if not rows:
        return ""
    cats = [c for c in CATEGORIES if any(r["domain"] == PREFIX + c for r in rows)]
    lines = ["| T | K | " + " | ".join(f"{c}: × / τ" for c in cats) + " | overall × | "
             "mean τ |", "|---|---|" + "---|" * (len(cats) + 2)]
    for temp in sorted({r["temperature"] for r in rows}):
        at = [r for r in rows if r["temperature"] == temp]
        base = [r for r in at if r["k"] == 0]
        for label in dict.fromkeys(r["k_label"] for r in sorted(at, key=_order)):
            mine = {r["domain"]: r for r in at if r["k_label"] == label}
            cells = []
            for c in cats:
                r = mine.get(PREFIX + c)
                sp = r and r.get("speedup_spread")
                x = _fmt(r and r["speedup_vs_k0"]) + (
                    f" ({sp['min']:.2f}–{sp['max']:.2f})" if sp and sp["n"] > 1 else "")
                cells.append(f"{x} / {_fmt(r and r.get('mean_accepted_length'))}")
            k0_tps = sum(r["tokens"] for r in base) / sum(r["tokens"] / r["tokens_per_s"]
                                                           for r in base)
            mine_rows = list(mine.values())
            tps = sum(r["tokens"] for r in mine_rows) / sum(r["tokens"] / r["tokens_per_s"]
                                                            for r in mine_rows)
            rounds = sum(r.get("rounds", 0) for r in mine_rows)
            tau = sum(r["tokens"] for r in mine_rows) / rounds if rounds else None
            lines.append(f"| {temp:g} | {_k({'k': mine_rows[0]['k'], 'adaptive': label[0] == 'a'})}"
                         f" | " + " | ".join(cells) + f" | **{_fmt(tps / k0_tps)}** | "
                         f"{_fmt(tau)} |")
    return ("\n## Spec-Bench (× = speedup over K=0, τ = mean accepted tokens per round)\n\n"
            + "\n".join(lines) + "\n")


def figures(records: list[dict], out: Path) -> list[Path]:
    paths = []
    domains = list(dict.fromkeys(r["domain"] for r in _specdec(records)))
    # 1. speedup heatmap K x temperature, one panel per domain
    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 3.6), squeeze=False)
    for ax, domain in zip(axes[0], domains, strict=True):
        rows = [r for r in _specdec(records, domain) if r["k"] > 0]
        ks = sorted({_order(r) for r in rows})
        temps = sorted({r["temperature"] for r in rows})
        grid = [[next((r["speedup_vs_k0"] for r in rows if _order(r) == k
                       and r["temperature"] == t), math.nan) for k in ks] for t in temps]
        im = ax.imshow(grid, cmap="RdYlGn", vmin=0.5, vmax=2.0, aspect="auto")
        ax.set_xticks(range(len(ks)), [f"≤{k}a" if adaptive else str(k) for k, adaptive in ks])
        ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps])
        ax.set_xlabel("K (draft tokens per round)")
        if ax is axes[0][0]:
            ax.set_ylabel("temperature")
        ax.set_title(f"{domain}: speedup vs K=0")
        for y, row in enumerate(grid):
            for x, v in enumerate(row):
                ax.text(x, y, _fmt(v), ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    paths.append(out / "speedup_heatmap.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    # 2. inter-token latency CDF, K=0 vs the best K, greedy
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, domain in enumerate(domains):
        rows = _specdec(records, domain, 0.0)
        if not rows:
            continue
        best = max((r for r in rows if r["k"] > 0), key=lambda r: r["tokens_per_s"], default=None)
        for r, style in ((next(r for r in rows if r["k"] == 0), "--"), (best, "-")):
            if r is None:
                continue
            gaps = sorted(b - a for run in r["runs"]
                          for a, b in zip(run["token_times"][:-1], run["token_times"][1:],
                                          strict=True))
            if gaps:
                ax.plot([g * 1e3 for g in gaps], [(i + 1) / len(gaps) for i in range(len(gaps))],
                        style, color=f"C{n}", label=f"{domain} K={_k(r)}")
    ax.set_xlabel("time between streamed tokens (ms)")
    ax.set_ylabel("fraction of tokens")
    ax.set_title("Inter-token latency CDF, greedy: K=0 (dashed) vs best K")
    ax.legend(fontsize=7)
    paths.append(out / "latency_cdf.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    # 3. acceptance by domain and draft position (largest K swept, greedy and sampled)
    fig, ax = plt.subplots(figsize=(6, 4))
    for domain in domains:
        for temp in sorted({r["temperature"] for r in _specdec(records, domain)}):
            rows = [r for r in _specdec(records, domain, temp) if r["k"] > 0]
            if rows:
                r = max(rows, key=_order)
                rates = r["acceptance_by_position"]
                ax.plot(range(1, len(rates) + 1), rates, marker="o",
                        label=f"{domain} T={temp:g} (K={_k(r)})")
    ax.set_xlabel("draft position in the round")
    ax.set_ylabel("rounds accepting this position")
    ax.set_ylim(0, 1.02)
    ax.set_title("Acceptance by domain and draft position")
    ax.legend(fontsize=7)
    paths.append(out / "acceptance_by_position.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def write_report(records: list[dict], out: Path, command: str) -> None:
    first = records[0]
    head = (f"# specdec bench\n\n`{command}` — {first['time']}, {first['draft']} → "
            f"{first['target']}, {first['dtype']}, {first['threads']} torch threads per "
            f"process, {first['max_new_tokens']} new tokens; {first['machine']} "
            f"({first['cpu']}); torch {first['versions']['torch']}, transformers "
            f"{first['versions']['transformers']}.\n\n")
    body = ("## Best K per domain and temperature\n\n" + best_table(records) +
            "\n## All configurations\n\n" + detail_table(records) + spec_bench_table(records)
            + llamacpp_table(records))
    paths = figures(records, out)
    pics = "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in paths) + "\n"
    (out / "bench.md").write_text(head + body + pics)
    print("\n" + body)
