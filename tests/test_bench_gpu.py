"""bench.gpu on CPU with tiny shapes: the code path the GPU run takes, every phase, checked
for complete and self-consistent figures (not for speed)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import gpu
from bench.gpu_e2e import missing_modules
from bench.gpu_report import ALPHAS, KS, expected_tokens

TOKENS = 16


def test_expected_tokens_formula():
    assert expected_tokens(0.8, 4) == pytest.approx((1 - 0.8**5) / 0.2)  # 3.3616
    assert expected_tokens(0.6, 2) == pytest.approx(1 + 0.6 + 0.36)
    assert expected_tokens(1.0, 4) == 5


def test_missing_modules_names_stand_ins_and_absent_modules():
    assert missing_modules([]) == []  # this checkout has every service module
    assert missing_modules(["structlog"]) == ["structlog"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-gpu")
    threads = torch.get_num_threads()  # (--threads 1 sets it for the whole process)
    yield from _run(out)
    torch.set_num_threads(threads)


def _run(out):
    assert gpu.main(["--device", "cpu", "--out", str(out), "--tokens", str(TOKENS),
                     "--prompt-tokens", "16", "--repeats", "3", "--warmup", "1",
                     "--sessions", "1,2", "--e2e-ks", "0,2,4", "--threads", "1",
                     "--eager-too", "1"]) == 0
    yield json.loads((out / "bench-gpu.json").read_text()), (out / "bench-gpu.md").read_text()


def test_every_phase_reports(result):
    res, md = result
    for key in "ABCD":
        assert key in res and "error" not in res[key], res.get(key)
    assert res["meta"]["device"] == "cpu" and res["meta"]["target_params"] > 0
    assert "CUDA" in res["Q"]["skipped"]  # int4 on CUDA only (test_bench_gpu_lowbit.py)
    for section in ("## Goals", "## A.", "## B.", "## C.", "## D.", "E[tokens/round]",
                    "## Q."):
        assert section in md


def test_phase_a_times_are_positive(result):
    a = result[0]["A"]
    for role in ("draft", "target"):
        for sessions in ("1", "2"):
            eng, bare = a[role]["engine"][sessions], a[role]["bare"][sessions]
            assert eng["draft_step_ms"] > 0
            for rows in (1, 2, 3, 5, 9):
                assert eng[f"verify_{rows}"]["ms"] > 0 and eng[f"verify_{rows}"]["n"] >= 3
                assert bare[f"forward_{rows}"]["ms"] > 0


def test_graphs_on_and_off_side_by_side(result):
    """--eager-too 1 (the default on CUDA): each engine figure also with --cuda-graphs 0,
    in a table of its own (on a CPU the flag changes nothing: no graphs, stats None)."""
    res, md = result
    assert res["meta"]["cuda_graphs_compared"] is True
    for role in ("draft", "target"):
        for sessions in ("1", "2"):
            on, off = res["A"][role]["engine"][sessions], res["A"][role]["engine_eager"][sessions]
            assert off["draft_step_ms"] > 0 and off["verify_9"]["ms"] > 0
            assert on["target_graphs"] is None and "graphs_error" not in on
    assert res["B"]["engine_target_only_eager"]["tokens_per_s"] > 0
    assert "### CUDA graphs on vs off" in md and "| target | verify_9 | 2 |" in md


def test_phase_b_target_only(result):
    b = result[0]["B"]
    for name in ("hf_generate", "engine_target_only"):
        assert b[name]["tokens"] == TOKENS and b[name]["tokens_per_s"] > 0
    assert b["ratio"] == pytest.approx(b["engine_target_only"]["tokens_per_s"]
                                       / b["hf_generate"]["tokens_per_s"], rel=1e-2)


def test_phase_c_follows_the_formula(result):
    res = result[0]
    a, c = res["A"], res["C"]
    fixed = next(r for r in res["D"]["runs"] if r["k"] == 4)["fixed_ms_per_round"]
    for table, fixed_1 in (("engine_only", 0.0), ("with_fixed", fixed)):
        rows = c[table]
        assert len(rows) == 2 * len(ALPHAS) * len(KS)
        for r in rows:
            s, k, alpha = r["sessions"], r["k"], r["alpha"]
            t, d = a["target"]["engine"][s], a["draft"]["engine"][s]
            f = fixed_1 if s == "1" else 0.0
            round_ms = k * d["draft_step_ms"] + t[f"verify_{k + 1}"]["ms"] + f
            assert r["expected_tokens"] == pytest.approx(expected_tokens(alpha, k), abs=1e-3)
            assert r["round_ms"] == pytest.approx(round_ms, abs=2e-3)
            assert r["speedup"] == pytest.approx(
                expected_tokens(alpha, k) / round_ms * t["verify_1"]["ms"], rel=1e-2)


def test_phase_d_draft_equals_target(result):
    d = result[0]["D"]
    assert [r["k"] for r in d["runs"]] == [0, 2, 4]
    for r in d["runs"]:
        assert r["generated_tokens"] == TOKENS and r["finish_reason"] == "FINISH_REASON_LENGTH"
        assert r["acceptance_rate"] >= 0.9  # the same model proposes and verifies
        assert r["rounds"] >= math.ceil(TOKENS / (r["k"] + 1))
        assert r["forward_ms_per_round"] > 0 and r["fixed_ms_per_round"] >= 0
        assert r["predicted_tokens_per_s"] > 0
        assert r["predicted_error"] == pytest.approx(
            r["predicted_tokens_per_s"] / r["tokens_per_s"] - 1)
    assert 0 < d["fixed_share_of_pair_round"] < 1
