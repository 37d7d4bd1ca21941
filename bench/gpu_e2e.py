"""bench.gpu phase D: one model as both draft and target (acceptance 1) through the three
real services (gRPC, separate processes, specdec.launch), K = 0, 2, 4 greedy, one session.

The services' own compute time per call (GenerationStats draft_time_s / verify_time_s, from
each call's compute_time_us) splits a request's time into forward passes and the fixed
cost per round: total - forward = the coordinator, gRPC and the services' request handling.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

# modules the three services import that bench.gpu's in-process phases do not need
SERVICE_MODULES = ("grpc", "google.protobuf", "structlog", "platformdirs", "grpc_health",
                   "grpc_reflection", "prometheus_client", "dns", "fastapi", "uvicorn",
                   "pydantic", "tokenizers", "safetensors")


def missing_modules(stubbed: list[str]) -> list[str]:
    missing = list(stubbed)
    for name in SERVICE_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found and name not in missing:
            missing.append(name)
    return missing


def generate(addr: str, prompt: str, tokens: int, k: int, timeout_s: float) -> dict:
    import grpc

    from coordinator.client import message_tokens
    from specdec.v1 import generator_pb2, generator_pb2_grpc
    req = generator_pb2.GenerateRequest(prompt=prompt, max_new_tokens=tokens,
                                        num_speculative_tokens=k, adaptive_k=False,
                                        temperature=0.0,
                                        # one message per round: the client's cost per
                                        # token stays out of the round
                                        token_grouping=generator_pb2.TOKEN_GROUPING_ROUND)
    n, stats = 0, None
    start = time.perf_counter()
    with grpc.insecure_channel(addr) as channel:
        for msg in generator_pb2_grpc.GeneratorStub(channel).Generate(req, timeout=timeout_s):
            if (got := message_tokens(msg)) is not None:
                n += len(got[0])
            else:
                stats = msg.stats
    wall = time.perf_counter() - start
    s = stats
    rounds = max(1, s.rounds)
    forward = s.draft_time_s + s.verify_time_s
    return {"k": k, "generated_tokens": s.generated_tokens, "streamed": n,
            "finish_reason": generator_pb2.FinishReason.Name(s.finish_reason),
            "rounds": s.rounds, "acceptance_rate": s.acceptance_rate if k else 1.0,
            "total_s": s.total_time_s, "client_wall_s": wall, "ttft_s": s.time_to_first_token_s,
            "draft_s": s.draft_time_s, "verify_s": s.verify_time_s,
            "tokens_per_s": s.generated_tokens / s.total_time_s,
            "forward_ms_per_round": forward / rounds * 1e3,
            "fixed_ms_per_round": max(0.0, s.total_time_s - forward) / rounds * 1e3}


def predict(run: dict, costs: dict, fixed_ms: float) -> float:
    """Tokens/s the speedup model predicts for this run's K and measured acceptance."""
    from bench.gpu_report import expected_tokens
    k = run["k"]
    e = expected_tokens(run["acceptance_rate"], k) if k else 1.0
    t = k * costs["draft_step_ms"] + costs[f"verify_{k + 1}"]["ms"] + fixed_ms
    return e / t * 1e3


def run_e2e(model_dir: Path, name: str, *, device: str, dtype: str, prompt: str,
            tokens: int, ks: tuple[int, ...], costs: dict | None, out: Path, timeout_s: float,
            log=print) -> dict:
    """model_dir: the model (bench.gpu_models.save_model_dir), served as draft and target;
    costs: phase A's 1-session engine costs of this model (for the predictions)."""
    from specdec.launch import start_local_stack
    deadline = time.monotonic() + timeout_s
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        log("  D: starting draft, target, coordinator")
        flags = ("--device", device, "--max-cache-mb", "0")
        t0 = time.perf_counter()
        stack = start_local_stack(
            str(model_dir), str(model_dir), log_dir=out / "logs", dtype=dtype,
            cache_dir=str(work / "cache"), timeout_s=max(30.0, deadline - time.monotonic()),
            threads=1 if device == "cpu" else 0,  # (two services share the CPU's cores)
            draft_args=flags, target_args=flags,
            coordinator_args=("--adaptive-k", "0", "--schedule", "lockstep"))
        start_s = time.perf_counter() - t0
        log(f"  D: services up in {start_s:.1f}s")
        res = {"model": name, "tokens": tokens, "start_s": round(start_s, 2), "runs": []}
        try:
            for k in ks:
                left = deadline - time.monotonic()
                if left < 5:
                    res["cut_short"] = f"time budget spent before K={k}"
                    break
                # warm-up; on CUDA as long as the run, so the services capture the CUDA
                # graphs of every attention window the run reaches before it is timed
                generate(stack.addr, prompt, min(8, tokens) if device == "cpu" else tokens, k,
                         left)
                r = generate(stack.addr, prompt, tokens, k, max(5.0, deadline - time.monotonic()))
                res["runs"].append(r)
                log(f"  D: K={k}: {r['generated_tokens']} tokens, {r['tokens_per_s']:.1f} tok/s,"
                    f" acceptance {r['acceptance_rate']:.3f}, fixed "
                    f"{r['fixed_ms_per_round']:.2f} ms/round")
        finally:
            stack.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runs = res["runs"]
    for i, r in enumerate(runs):
        # the fixed cost comes from another run (the one before; K=0's from the next), so
        # the prediction is not fitted to the run it predicts
        other = runs[i - 1] if i else (runs[1] if len(runs) > 1 else None)
        if costs and other and r["k"] + 1 <= 9 and f"verify_{r['k'] + 1}" in costs:
            r["fixed_from"] = f"K={other['k']}"
            r["predicted_tokens_per_s"] = predict(r, costs, other["fixed_ms_per_round"])
            r["predicted_error"] = r["predicted_tokens_per_s"] / r["tokens_per_s"] - 1
    return res
