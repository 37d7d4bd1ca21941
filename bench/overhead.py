"""make bench-overhead: the fixed cost of a speculative round, i.e. what a round costs
besides the models' forward passes (coordinator Python, gRPC, servicers, worker hand-off).

python -m bench.overhead [--tokens 300] [--sessions 1,8] [--ks 0,1,4,8]
                         [--schedules lockstep,pipelined] [--pairs same,perturbed]
                         [--omp shipped,PASSIVE] [--round-streams 1,0] [--placements shared,split]
                         [--groupings token,round] [--repeats 3]
                         [--out results/bench-overhead]

A tiny float32 pair (2 layers, hidden 64, built from a config with fixed seeds; nothing is
downloaded) runs through the three real services on loopback, one process each. For every
configuration the services' own forward time (the deltas of their specdec_forward_seconds,
the model call alone) is subtracted from the generation's wall time:

    fixed per round = (wall - forward) / rounds

With draft == target every proposal is accepted, so a round yields exactly K + 1 tokens and
the client sees each round end; the per-round wall times give p50/p95 (minus the mean forward
per round). `--omp shipped` runs the services with the environment the project ships
(specdec.launch), `--omp PASSIVE` with OMP_WAIT_POLICY=PASSIVE set by hand. `--groupings`:
the client asks for one message per token (the API's default) and/or one per round
(GenerateRequest.token_grouping ROUND).
Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

from coordinator.client import message_tokens
from specdec.launch import start_local_stack
from specdec.v1 import generator_pb2, generator_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
CPU_NAMES = ("coordinator", "draft", "target", "client")  # client: this process
PROMPT = "def add(a, b):\n    return"


def make_pair(root: Path, max_positions: int) -> dict[str, Path]:
    """target, and drafts `same` (== target) and `perturbed` (medium acceptance)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import EOS, build_model, perturb, save, tiny_config, train_tokenizer
    tok = train_tokenizer()
    config = tiny_config(len(tok), tok.convert_tokens_to_ids(EOS),
                         max_position_embeddings=max_positions)
    target = build_model(config, seed=1)
    return {"target": save(target, tok, root / "target"),
            "same": save(target, tok, root / "same"),
            "perturbed": save(perturb(target, 0.03, seed=2), tok, root / "perturbed")}


def forward_seconds(port: int) -> float:
    """The sum of a service's specdec_forward_seconds over every op."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("specdec_forward_seconds_sum"))


async def generate(addr: str, sessions: int, k: int, tokens: int, grouping: str = "token"
                   ) -> tuple[float, list]:
    """`sessions` greedy generations at once, EOS ignored by length (a prompt with no early
    EOS is asked for `tokens`); returns (wall s, [(token arrival times, stats)]): a message
    of n tokens gives n arrival times."""
    token_grouping = generator_pb2.TokenGrouping.Value(f"TOKEN_GROUPING_{grouping.upper()}")
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)

        async def one(i: int):
            req = generator_pb2.GenerateRequest(prompt=PROMPT + " " * i, max_new_tokens=tokens,
                                                num_speculative_tokens=k, adaptive_k=False,
                                                token_grouping=token_grouping)
            times, stats = [], None
            async for msg in stub.Generate(req, timeout=600):
                if (got := message_tokens(msg)) is not None:
                    times += [time.perf_counter()] * len(got[0])
                else:
                    stats = msg.stats
            return times, stats

        start = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(sessions)))
        return time.perf_counter() - start, results


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process so far, all its threads (Linux /proc)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_walls(times: list[float], k: int) -> list[float]:
    """Per-round wall times of an all-accepted stream: a round ends every K + 1 tokens."""
    ends = times[k::k + 1]
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def measure(stack, k: int, sessions: int, tokens: int, repeats: int, grouping: str) -> dict:
    draft, target, coordinator = stack.processes
    ports = [p.metrics_port for p in (draft, target)]
    pids = dict(zip(CPU_NAMES, (coordinator.proc.pid, draft.proc.pid, target.proc.pid, None),
                    strict=True))
    runs = []
    asyncio.run(generate(stack.addr, sessions, k, min(16, tokens), grouping))  # warm-up
    for _ in range(repeats):
        before = sum(forward_seconds(p) for p in ports)
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        _, results = asyncio.run(generate(stack.addr, sessions, k, tokens, grouping))
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        forward = sum(forward_seconds(p) for p in ports) - before
        stats = [s for _, s in results]
        wall = max(s.total_time_s for s in stats)  # the coordinator's clock, prompt to stats
        rounds = statistics.mean(s.rounds for s in stats)
        generated = sum(s.generated_tokens for s in stats)
        accepted = sum(s.accepted_draft_tokens for s in stats)
        proposed = sum(s.proposed_draft_tokens for s in stats)
        run = {"wall_s": wall, "rounds": rounds, "forward_s": forward,
               "tokens_per_s": generated / wall,
               "acceptance": accepted / proposed if proposed else None,
               "fixed_ms": (wall - forward) / rounds * 1e3,
               "forward_ms": forward / rounds * 1e3,
               # CPU time per round of each process (all threads): where the fixed cost is
               # spent, read without the wall clock's sensitivity to a busy machine
               **{f"cpu_{name}_ms": v / rounds * 1e3 for name, v in cpu.items()}}
        if sessions == 1 and (k == 0 or accepted == proposed):
            walls = sorted(round_walls(results[0][0], k))
            if walls:
                run["round_p50_ms"] = statistics.median(walls) * 1e3
                run["round_p95_ms"] = walls[int(0.95 * (len(walls) - 1))] * 1e3
                run["fixed_p50_ms"] = run["round_p50_ms"] - run["forward_ms"]
                run["fixed_p95_ms"] = run["round_p95_ms"] - run["forward_ms"]
        runs.append(run)
    best = sorted(runs, key=lambda r: r["fixed_ms"])[len(runs) // 2]  # the median run
    return {"k": k, "sessions": sessions, "grouping": grouping,
            **{key: round(v, 4) if isinstance(v, float) else v for key, v in best.items()},
            "fixed_ms_runs": [round(r["fixed_ms"], 3) for r in runs]}


# "split": the models on the last CPU, one thread each, the coordinator and this client on the
# first: as on a GPU machine, where the round's CPU work does not share cores with the passes
PLACEMENTS = ("shared", "split")


def run_config(dirs, pair: str, schedule: str, omp: str, streams: int, placement: str, args,
               log_dir: Path) -> list[dict]:
    env_before = os.environ.get("OMP_WAIT_POLICY")
    if omp == "shipped":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = omp
    flags = ("--metrics-port", "0", "--max-cache-mb", "0")
    mine = os.sched_getaffinity(0)
    cpus = None
    if placement == "split":
        first, last = min(mine), max(mine)
        cpus = {"draft": {last}, "target": {last}, "coordinator": {first}}
        os.sched_setaffinity(0, {first})
    try:
        stack = start_local_stack(str(dirs[pair]), str(dirs["target"]), log_dir=log_dir,
                                  threads=1 if placement == "split" else args.threads,
                                  cpus=cpus, timeout_s=120, draft_args=flags,
                                  target_args=flags,
                                  coordinator_args=("--schedule", schedule, "--adaptive-k", "0",
                                                    "--round-streams", str(streams)))
    finally:
        if env_before is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = env_before
    rows = []
    try:
        for n in args.sessions:
            for k in args.ks:
                for grouping in args.groupings:
                    row = {"pair": pair, "schedule": schedule, "omp": omp, "streams": streams,
                           "placement": placement,
                           **measure(stack, k, n, args.tokens, args.repeats, grouping)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        stack.stop()
        os.sched_setaffinity(0, mine)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    out = [f"# bench-overhead ({meta['when']}, {meta['machine']})", "",
           f"`{meta['command']}`", "",
           "fixed = wall − the services' forward time, per round (mean of the median run; "
           "p50/p95 from the per-round wall times where every proposal is accepted).", "",
           "| pair | schedule | OMP | streams | placement | messages | sessions | K | tokens/s | "
           "forward ms/round | "
           "fixed ms/round | fixed p50 | fixed p95 | acceptance | CPU ms/round: coordinator "
           "/ draft / target / client |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def f(r, key):
        v = r.get(key)
        return "–" if v is None else f"{v:.2f}"
    for r in rows:
        out.append(f"| {r['pair']} | {r['schedule']} | {r['omp']} | {r.get('streams', 1)} "
                   f"| {r.get('placement', 'shared')} | per {r.get('grouping', 'token')} "
                   f"| {r['sessions']} | {r['k']} "
                   f"| {r['tokens_per_s']:.0f} | {f(r, 'forward_ms')} | {f(r, 'fixed_ms')} | "
                   f"{f(r, 'fixed_p50_ms')} | {f(r, 'fixed_p95_ms')} | {f(r, 'acceptance')} | "
                   + " / ".join(f(r, f"cpu_{n}_ms") for n in CPU_NAMES) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    names = lambda s: s.split(",")  # noqa: E731
    p.add_argument("--tokens", type=int, default=300, help="new tokens per generation")
    p.add_argument("--sessions", type=ints, default=[1, 8])
    p.add_argument("--ks", type=ints, default=[0, 1, 4, 8])
    p.add_argument("--schedules", type=names, default=["lockstep", "pipelined"])
    p.add_argument("--pairs", type=names, default=["same", "perturbed"])
    p.add_argument("--omp", type=names, default=["shipped", "PASSIVE"],
                   help="OpenMP wait policies: shipped (as the project sets it) or a value")
    p.add_argument("--round-streams", type=ints, default=[1],
                   help="the coordinator's --round-streams values to compare (1,0: both)")
    p.add_argument("--placements", type=names, default=["shared"],
                   help="shared: every process on every CPU; split: the models on the last "
                        "CPU (one thread each), the coordinator and the client on the first, "
                        "as on a GPU machine")
    p.add_argument("--groupings", type=names, default=["token", "round"],
                   help="the client's messages: one per token and/or one per round")
    p.add_argument("--repeats", type=int, default=3, help="runs per row (the median is kept)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per service (0 = torch's default)")
    p.add_argument("--out", type=Path, default=Path("results/bench-overhead"))
    args = p.parse_args(argv)
    if unknown := set(args.groupings) - {"token", "round"}:
        p.error(f"--groupings: unknown {', '.join(sorted(unknown))}; expected token, round")
    if unknown := set(args.placements) - set(PLACEMENTS):
        p.error(f"--placements: unknown {', '.join(sorted(unknown))}; expected {PLACEMENTS}")
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    meta = {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} CPUs, "
            f"{platform.processor() or platform.machine()}",
            "command": "python -m bench.overhead " + " ".join(argv if argv is not None
                                                               else sys.argv[1:])}
    rows = []
    try:
        dirs = make_pair(work / "models", max_positions=args.tokens + max(args.ks) + 64)
        for omp in args.omp:
            for pair in args.pairs:
                for schedule in args.schedules:
                    for streams in args.round_streams:
                        for placement in args.placements:
                            rows += run_config(dirs, pair, schedule, omp, streams, placement,
                                               args, work / "logs")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
