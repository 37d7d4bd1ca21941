"""bench/stats.py on constructed data; bench/rows.py on small weights."""

import json
import math
import sys

import pytest

from bench import rows
from bench.stats import (
    acceptance_by_position,
    inter_token_latencies,
    percentile,
    speedup,
    summarize,
    throughput,
)


def test_percentile_interpolates_like_numpy():
    xs = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 5.0
    assert percentile(xs, 50) == 3.0
    assert percentile(xs, 95) == pytest.approx(4.8)   # numpy.percentile(xs, 95)
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_inter_token_latencies():
    assert inter_token_latencies([1.0, 1.5, 1.75, 3.0]) == [0.5, 0.25, 1.25]
    assert inter_token_latencies([2.0]) == []


def test_acceptance_by_position_pools_runs_of_different_widths():
    # run A: 4 rounds proposing 2 positions; run B: 2 rounds proposing 3 positions
    rates = acceptance_by_position([[4, 4], [2, 2, 2]], [[3, 1], [2, 1, 0]])
    assert rates == [5 / 6, 2 / 6, 0.0]
    assert acceptance_by_position([], []) == []


def test_throughput_and_speedup():
    # 100 tokens in 10 s and 20 tokens in 10 s: 6 tokens/s, not the mean of 10 and 2
    assert throughput([100, 20], [10.0, 10.0]) == 6.0
    assert speedup(12.0, 6.0) == 2.0
    assert math.isnan(speedup(1.0, 0.0))


def test_summarize_pools_specdec_stats():
    stats = {"proposed_draft_tokens": 8, "accepted_draft_tokens": 6, "rounds": 2,
             "generated_tokens": 8, "proposed_at_position": [2, 2, 2, 2],
             "accepted_at_position": [2, 2, 1, 1], "draft_time_s": 1.0, "verify_time_s": 2.0,
             "coordinator_time_s": 0.5, "wire_bytes": 400}
    run = {"tokens": 8, "total_s": 4.0, "ttft_s": 0.5,
           "token_times": [0.5, 0.5, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0], "stats": stats}
    s = summarize([run, run])
    assert s["tokens_per_s"] == 2.0 and s["acceptance_rate"] == 0.75
    assert s["mean_accepted_length"] == 4.0 and s["wire_bytes_per_round"] == 200
    assert s["acceptance_by_position"] == [1.0, 1.0, 0.5, 0.5]
    assert s["itl_p50_s"] == 0.0 and s["itl_p99_s"] == 1.5  # 2 gaps of 1.5 s among 14
    assert "acceptance_rate" not in summarize([{**run, "stats": None}])


def test_bench_rows_times_every_format_at_every_row_count(tmp_path, monkeypatch):
    """python -m bench.rows on small weights: one time per (format, rows), in the JSON."""
    out = tmp_path / "rows.json"
    monkeypatch.setattr(sys, "argv", ["bench.rows", "--shape", "256x256", "--weights", "2",
                                      "--rows", "1,3", "--threads", "1", "--out", str(out)])
    rows.main()
    result = json.loads(out.read_text())
    assert set(result["ms_per_weight"]) == {"bfloat16", "float32", "int8", "int4", "fp16"}
    for times in result["ms_per_weight"].values():
        assert set(times) == {"1", "3"} and all(t > 0 for t in times.values())
