"""bench.overhead end to end on a small configuration, and the services' OpenMP policy."""

import json
import os

from bench.overhead import main
from specdec.service_main import apply_omp_wait_policy


def test_bench_overhead_writes_fixed_costs_per_round(tmp_path):
    out = tmp_path / "overhead"
    affinity = os.sched_getaffinity(0)
    main(["--sessions", "1", "--ks", "0,2", "--schedules", "lockstep", "--pairs", "same",
          "--omp", "shipped", "--placements", "shared,split", "--groupings", "token,round",
          "--repeats", "1", "--tokens", "30", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["placement"], r["k"], r["grouping"]) for r in rows] == [
        (placement, k, grouping) for placement in ("shared", "split") for k in (0, 2)
        for grouping in ("token", "round")]
    for r in rows:
        assert r["rounds"] > 0 and r["forward_ms"] > 0 and r["fixed_ms"] > 0
        assert min(r[f"cpu_{n}_ms"] for n in ("coordinator", "draft", "target", "client")) >= 0
    assert sum(r["cpu_target_ms"] for r in rows) > 0  # (CPU time ticks in 10 ms steps)
    assert {r["acceptance"] for r in rows if r["k"]} == {1.0}  # draft == target
    assert all("fixed_p50_ms" in r for r in rows)  # every round's end seen, either grouping
    assert os.sched_getaffinity(0) == affinity  # the split placement gave the CPUs back
    assert "fixed ms/round" in out.with_suffix(".md").read_text()


def test_the_wait_policy_defaults_to_passive_and_respects_the_environment():
    env = {}
    apply_omp_wait_policy("auto", env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    apply_omp_wait_policy("auto", env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE"
    apply_omp_wait_policy("passive", env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
