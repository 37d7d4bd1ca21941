"""Spec-Bench in the bench: the vendored question set (checked on load), its categories, the
leaderboard-style table and the spread of repeats, on constructed inputs."""

import math
import shutil

import pytest

from bench import specbench
from bench.report import spec_bench_table
from bench.run import parse_args
from bench.stats import spread


def test_vendored_question_set_has_the_leaderboards_six_categories():
    questions = specbench.load_questions()
    assert len(questions) == 480
    sizes = {c: len(specbench.conversations(c, questions)) for c in specbench.CATEGORIES}
    assert sizes == dict.fromkeys(specbench.CATEGORIES, 80)
    assert {len(t) for t in specbench.conversations("mt_bench", questions)} == {2}
    # evenly spaced picks reach every MT-bench sub-category, not only the first
    picked = specbench.spread([q for q in questions if q["category"] in specbench.MT_BENCH], 8)
    assert {q["category"] for q in picked} == set(specbench.MT_BENCH)


def test_a_changed_copy_is_refused(tmp_path):
    changed = tmp_path / "question.jsonl"
    shutil.copy(specbench.DATA, changed)
    with changed.open("a") as f:
        f.write('{"question_id": 0, "category": "qa", "turns": ["?"]}\n')
    with pytest.raises(ValueError, match="is not the vendored copy's"):
        specbench.load_questions(changed)


def test_domains_and_ks():
    args, plan = parse_args(["--domains", "spec-bench,code", "--ks", "0,a8", "--repeats", "3"])
    assert plan.domains == [f"spec-bench/{c}" for c in specbench.CATEGORIES] + ["code"]
    assert plan.ks == ["a8"]  # K=0 is the baseline and runs anyway
    assert plan.repeats == 3
    with pytest.raises(SystemExit):
        parse_args(["--domains", "spec-bench/poetry"])


def test_spread_of_repeats():
    assert spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([2.5])["std"] == 0.0
    assert math.isnan(spread([])["mean"])


def record(category: str, label: str, tokens: int, seconds: float, rounds: int,
           speedups=None) -> dict:
    k = int(label.removeprefix("a"))
    r = {"system": "specdec", "domain": "spec-bench/" + category, "temperature": 0.0, "k": k,
         "adaptive": label.startswith("a"), "k_label": label, "tokens": tokens,
         "tokens_per_s": tokens / seconds, "rounds": rounds,
         "mean_accepted_length": tokens / rounds}
    if speedups:
        r["speedup_spread"] = spread(speedups)
    return r


def test_spec_bench_table_reports_speedup_and_mean_accepted_tokens_per_category():
    records = [record("qa", "0", 100, 50.0, 100), record("rag", "0", 100, 50.0, 100),
               record("qa", "a8", 100, 25.0, 40, [1.8, 2.2]),
               record("rag", "a8", 100, 40.0, 50, [1.2, 1.3])]
    for r in records:
        base = next(b for b in records if b["domain"] == r["domain"] and b["k"] == 0)
        r["speedup_vs_k0"] = r["tokens_per_s"] / base["tokens_per_s"]
    table = spec_bench_table(records)
    assert "| T | K | qa: × / τ | rag: × / τ | overall × | mean τ |" in table
    assert "| 0 | 0 | 1.00 / 1.00 | 1.00 / 1.00 | **1.00** | 1.00 |" in table
    # qa 2.00×, τ 2.5; rag 1.25×, τ 2.0; overall 200 tokens in 65 s vs 100 s: 1.54×, τ 200/90
    assert ("| 0 | ≤8 adaptive | 2.00 (1.80–2.20) / 2.50 | 1.25 (1.20–1.30) / 2.00 | **1.54** "
            "| 2.22 |") in table
    assert spec_bench_table([{**records[0], "domain": "code"}]) == ""
