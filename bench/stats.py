"""The benchmark's statistics, as plain functions on plain data (unit-tested on constructed
inputs in tests/test_bench_stats.py)."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile, q in [0, 100] (numpy's default method)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def inter_token_latencies(token_times: list[float]) -> list[float]:
    """Seconds between consecutive tokens' arrivals (the first token's wait is the TTFT)."""
    return [b - a for a, b in zip(token_times[:-1], token_times[1:], strict=True)]


def acceptance_by_position(proposed_at: list[list[int]], accepted_at: list[list[int]],
                           ) -> list[float]:
    """Pooled acceptance per draft position over several runs: for position i, the rounds
    that accepted it (accepted prefix longer than i) over the rounds that proposed it."""
    width = max((len(p) for p in proposed_at), default=0)
    rates = []
    for i in range(width):
        proposed = sum(p[i] for p in proposed_at if i < len(p))
        accepted = sum(a[i] for a in accepted_at if i < len(a))
        rates.append(accepted / proposed if proposed else math.nan)
    return rates


def throughput(tokens: list[int], seconds: list[float]) -> float:
    """Tokens/s over several runs: all tokens over all time (not a mean of ratios)."""
    total = sum(seconds)
    return sum(tokens) / total if total > 0 else math.nan


def speedup(fast_tokens_per_s: float, base_tokens_per_s: float) -> float:
    return fast_tokens_per_s / base_tokens_per_s if base_tokens_per_s > 0 else math.nan


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation, min and max of repeated measurements (std is 0 for
    one value)."""
    xs = [v for v in values if not math.isnan(v)]
    if not xs:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return {"mean": mean, "std": math.sqrt(var), "min": min(xs), "max": max(xs), "n": len(xs)}


def summarize(runs: list[dict]) -> dict:
    """Figures of one configuration from its runs (one dict per prompt, as bench/run.py
    records them: tokens, total_s, ttft_s, token_times, and specdec's stats when present)."""
    itl = [d for r in runs for d in inter_token_latencies(r["token_times"])]
    out = {
        "prompts": len(runs),
        "tokens": sum(r["tokens"] for r in runs),
        "tokens_per_s": throughput([r["tokens"] for r in runs], [r["total_s"] for r in runs]),
        "ttft_p50_s": percentile([r["ttft_s"] for r in runs], 50),
        "itl_p50_s": percentile(itl, 50), "itl_p95_s": percentile(itl, 95),
        "itl_p99_s": percentile(itl, 99),
    }
    stats = [r["stats"] for r in runs if r.get("stats")]
    if stats:
        proposed = sum(s["proposed_draft_tokens"] for s in stats)
        rounds = sum(s["rounds"] for s in stats)
        out.update({
            "acceptance_rate": (sum(s["accepted_draft_tokens"] for s in stats) / proposed
                                if proposed else math.nan),
            "mean_accepted_length": sum(s["generated_tokens"] for s in stats) / rounds,
            "rounds": rounds,
            "acceptance_by_position": acceptance_by_position(
                [s["proposed_at_position"] for s in stats],
                [s["accepted_at_position"] for s in stats]),
            "draft_s": sum(s["draft_time_s"] for s in stats),
            "verify_s": sum(s["verify_time_s"] for s in stats),
            "coordinator_s": sum(s["coordinator_time_s"] for s in stats),
            "wire_bytes_per_round": sum(s["wire_bytes"] for s in stats) / rounds,
        })
    return out
