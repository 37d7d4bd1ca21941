"""python -m specdec serve --draft D --target T [--http-port 8000] [any service/coordinator flag]

Starts the draft service, the target service and the coordinator as child processes on this
machine, waits until all three serve (and the HTTP API's /health answers), prints the
endpoints and a curl to paste, and runs until Ctrl-C (SIGINT) or SIGTERM, which stop all
three (coordinator first). If a child exits, the others are stopped and serve exits 1 with
that child's last log lines.

Every other flag goes to each process whose own parser has it (--dtype to both services,
--min-confidence to the draft, --default-k to the coordinator, --log-level to all three),
except the flags of the public face, which the coordinator alone gets (COORDINATOR_ONLY: the
services stay on 127.0.0.1, plaintext). --draft-args / --target-args / --coordinator-args
'…' pass flags to one process only (e.g. --draft-args '--quantization int4').
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

# flags of both services and the coordinator that serve gives the coordinator alone: where
# it listens and with which certificate, and its metrics port (one port cannot serve three)
COORDINATOR_ONLY = ("--host", "--tls-cert-file", "--tls-key-file", "--metrics-port")
# the processes' flags serve sets itself (--draft/--target/--port are serve's own)
SET_BY_SERVE = {"--model": "--draft and --target name the models"}


def parser() -> argparse.ArgumentParser:
    from .fetch import DEFAULT_DRAFT, DEFAULT_TARGET

    p = argparse.ArgumentParser(
        prog="python -m specdec serve", description=__doc__, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft", default=DEFAULT_DRAFT,
                   help="draft model: registry name, local HF directory, .gguf file or Hub id")
    p.add_argument("--target", default=DEFAULT_TARGET, help="target model (as --draft)")
    p.add_argument("--http-port", type=int, default=8000,
                   help="the OpenAI-compatible HTTP API; 0 = any free port, -1 = off")
    p.add_argument("--port", type=int, default=50050,
                   help="the coordinator's gRPC Generator API; 0 = any free port")
    p.add_argument("--draft-port", type=int, default=50051, help="the draft service's port")
    p.add_argument("--target-port", type=int, default=50052, help="the target service's port")
    p.add_argument("--log-dir", type=Path, default=Path("results/logs"),
                   help="each process's log (draft.log, target.log, coordinator.log)")
    p.add_argument("--start-timeout-s", type=float, default=1800.0,
                   help="longest wait for all three to serve (a first start fetches and "
                        "converts the models)")
    for name in ("draft", "target", "coordinator"):
        p.add_argument(f"--{name}-args", default="", metavar="'FLAGS'",
                       help=f"flags for the {name} process only (shell-quoted)")
    return p


def process_parsers() -> dict[str, argparse.ArgumentParser]:
    """The three programs' own parsers, as their main() builds them."""
    from coordinator import config as coordinator_config

    from .config import model_service_parser

    return {"draft": model_service_parser("python -m draft_service", "draft", 50051),
            "target": model_service_parser("python -m target_service", "target", 50052),
            "coordinator": coordinator_config.parser()}


class RoutingError(ValueError):
    pass


def route(args: list[str], parsers: dict[str, argparse.ArgumentParser]) -> dict[str, list]:
    """Split flags (`--flag value`, `--flag=value`) among the processes whose parsers
    accept them."""
    out: dict[str, list] = {name: [] for name in parsers}
    i = 0
    while i < len(args):
        flag, eq, _ = args[i].partition("=")
        if not flag.startswith("--"):
            raise RoutingError(f"unexpected argument {args[i]!r}: only --flags go to the "
                               "processes")
        if flag in SET_BY_SERVE:
            raise RoutingError(f"{flag} is set by serve: {SET_BY_SERVE[flag]}")
        owners = [n for n, p in parsers.items() if flag in p._option_string_actions]
        if not owners:
            raise RoutingError(f"{flag}: no process has this flag (see --help of "
                               "python -m draft_service, target_service and coordinator)")
        if flag in COORDINATOR_ONLY:
            owners = ["coordinator"]
        takes_value = parsers[owners[0]]._option_string_actions[flag].nargs != 0
        if eq or not takes_value:
            part = [args[i]]
        elif i + 1 < len(args):
            part = [flag, args[i + 1]]
            i += 1
        else:
            raise RoutingError(f"{flag} needs a value")
        for name in owners:
            out[name] += part
        i += 1
    return out


def process_args(opts: argparse.Namespace, extra: list[str]) -> dict[str, list[str]]:
    """Each process's flags beyond what start_local_stack gives it; every list is checked
    with that process's own parser first (argparse's message and exit 2 on a bad one)."""
    parsers = process_parsers()
    routed = route(extra, parsers)
    for name in routed:
        routed[name] += shlex.split(getattr(opts, f"{name}_args"))
    given = {"draft": ["--model", opts.draft, "--port", str(opts.draft_port)],
             "target": ["--model", opts.target, "--port", str(opts.target_port)],
             "coordinator": ["--draft", "127.0.0.1:1", "--target", "127.0.0.1:1",
                             "--port", str(opts.port)]}
    for name, p in parsers.items():
        p.parse_args(given[name] + routed[name])
    return routed


def _get(url: str, timeout_s: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (loopback)
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def banner(stack, opts, coordinator_args: list[str]) -> str:
    draft, target, coordinator = stack.processes
    lines = [f"specdec serving {opts.target} with draft {opts.draft}",
             f"  gRPC Generator API: 127.0.0.1:{coordinator.port}  "
             f"(python -m coordinator.client --addr 127.0.0.1:{coordinator.port} \"def fib(n):\")",
             f"  draft service 127.0.0.1:{draft.port}, target service 127.0.0.1:{target.port};"
             f" logs in {opts.log_dir}/"]
    if coordinator.http_port:
        tls = any(a.startswith("--tls-cert-file") for a in coordinator_args)
        base = f"{'https' if tls else 'http'}://127.0.0.1:{coordinator.http_port}"
        status, body = (0, b"") if tls else _get(f"{base}/v1/models")
        model = json.loads(body)["data"][0]["id"] if status == 200 else opts.target
        auth = " -H \"Authorization: Bearer $SPECDEC_API_KEY\"" if status == 401 else ""
        request = json.dumps({"model": model, "max_tokens": 64, "messages": [
            {"role": "user", "content": "Reverse a string in Python"}]})
        lines[1:1] = [f"  OpenAI-compatible API: {base}/v1  (model \"{model}\")"]
        lines += ["try:", f"  curl -s {base}/v1/chat/completions{auth} "
                          f"-H 'Content-Type: application/json' -d '{request}'"]
    return "\n".join(lines + ["Ctrl-C stops all three."])


def wait_healthy(stack, timeout_s: float = 60) -> None:
    """The HTTP API's /health answers 200 (plaintext HTTP only; the services and the
    coordinator already reported SERVING)."""
    http = stack.processes[-1].http_port
    deadline = time.monotonic() + timeout_s
    while http and time.monotonic() < deadline:
        try:
            if _get(f"http://127.0.0.1:{http}/health", 5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    if http:
        raise TimeoutError(f"the HTTP API on port {http} is not healthy after {timeout_s:g}s")


def main(argv: list[str] | None = None) -> int:
    from .launch import ChildFailed, log_tail, start_local_stack

    opts, extra = parser().parse_known_args(argv)
    try:
        args = process_args(opts, extra)
    except RoutingError as e:
        print(f"python -m specdec serve: error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()
    print(f"starting draft {opts.draft}, target {opts.target} and the coordinator "
          f"(logs in {opts.log_dir}/) ...", flush=True)
    try:
        stack = start_local_stack(
            opts.draft, opts.target, log_dir=opts.log_dir, dtype=None, threads=None,
            ports=(opts.draft_port, opts.target_port, opts.port),
            http_port=None if opts.http_port < 0 else opts.http_port,
            timeout_s=opts.start_timeout_s, draft_args=tuple(args["draft"]),
            target_args=tuple(args["target"]), coordinator_args=tuple(args["coordinator"]),
            own_session=True)
    except (ChildFailed, TimeoutError) as e:
        print(f"serve: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted while starting; stopped", file=sys.stderr)
        return 130
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    failed = None
    try:
        wait_healthy(stack)
        print(banner(stack, opts, args["coordinator"]), flush=True)
        while not stop.wait(0.5):
            failed = next((p for p in stack.processes if p.proc.poll() is not None), None)
            if failed:
                print(f"serve: {failed.name} exited with {failed.proc.returncode}; its log "
                      f"({failed.log_path}) ends:\n{log_tail(failed.log_path)}",
                      file=sys.stderr, flush=True)
                break
    finally:
        print("stopping ...", flush=True)
        codes = dict(zip([p.name for p in reversed(stack.processes)], stack.stop(),
                         strict=True))
        print("exit codes:", codes, flush=True)
    return 1 if failed or any(codes.values()) else 0
