"""Start the three services locally as processes (for `make run`, `make demo` and tests).

Each process logs JSON to its own file; a service is up once it logs its "serving" event,
which also carries the port it bound (so port 0 works).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Process:
    name: str
    proc: subprocess.Popen
    log_path: Path
    port: int = 0
    metrics_port: int | None = None
    http_port: int | None = None


@dataclass
class LocalStack:
    processes: list[Process] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.processes[-1].port}"

    def stop(self, timeout_s: float = 20) -> list[int]:
        """SIGTERM every process (coordinator first); returns their exit codes."""
        for p in reversed(self.processes):
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        codes = []
        for p in reversed(self.processes):
            try:
                codes.append(p.proc.wait(timeout_s))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                codes.append(p.proc.wait())
        return codes


class ChildFailed(RuntimeError):
    """A child process exited while it should be serving."""

    def __init__(self, p: Process):
        self.process = p
        super().__init__(f"{p.name} exited with {p.proc.returncode}; its log ({p.log_path}) "
                         f"ends:\n{log_tail(p.log_path)}")


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a child's log, JSON events shown as `level event key=value …`."""
    out = []
    for line in path.read_text(errors="replace").splitlines()[-lines:]:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            out.append(line)
            continue
        if not isinstance(e, dict):
            out.append(line)
            continue
        rest = " ".join(f"{k}={v}" for k, v in e.items()
                        if k not in ("event", "level", "timestamp"))
        out.append(f"{e.get('level', '')} {e.get('event', '')} {rest}".strip())
    return "\n".join(out)


def _own_session(cpus: set[int] | None) -> None:
    """In the child: a session of its own (a terminal's Ctrl-C reaches only the launcher,
    which stops the children in order), SIGTERM when the launcher dies (Linux)."""
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


def spawn(name: str, module: str, args: list[str], log_dir: Path, env: dict,
          cpus: set[int] | None = None, own_session: bool = False) -> Process:
    """cpus: pin the process (and every thread it starts) to these CPUs, as taskset -c.
    own_session: see _own_session (call from the thread that outlives the child)."""
    log_path = log_dir / f"{name}.log"
    preexec = ((lambda: _own_session(cpus)) if own_session else
               None if cpus is None else (lambda: os.sched_setaffinity(0, cpus)))
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, "SPECDEC_LOG_FORMAT": "json", **env},
                                preexec_fn=preexec)
    return Process(name, proc, log_path)


def _serving(p: Process) -> bool:
    for line in p.log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event") == "serving":
            p.port = event["port"]
            p.metrics_port = event.get("metrics_port")
            p.http_port = event.get("http_port")
            return True
    return False


def wait_serving(p: Process, timeout_s: float) -> None:
    wait_all_serving([p], timeout_s)


def wait_all_serving(processes: list[Process], timeout_s: float) -> None:
    """Until every process has logged its "serving" event; ChildFailed as soon as one exits,
    TimeoutError past timeout_s."""
    deadline = time.monotonic() + timeout_s
    waiting = list(processes)
    while waiting:
        waiting = [p for p in waiting if not _serving(p)]
        for p in waiting:
            if p.proc.poll() is not None:
                raise ChildFailed(p)
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f"{waiting[0].name} not serving after {timeout_s:g}s; see "
                               f"{waiting[0].log_path}")
        if waiting:
            time.sleep(0.2)


def start_local_stack(draft_model: str, target_model: str, *, log_dir: Path,
                      ports: tuple[int, int, int] = (0, 0, 0), dtype: str | None = "float32",
                      threads: int | None = 0, cache_dir: str | None = None,
                      timeout_s: float = 1800, draft_dtype: str | None = None,
                      http_port: int | None = None, draft_args: tuple[str, ...] = (),
                      target_args: tuple[str, ...] = (), coordinator_args: tuple[str, ...] = (),
                      cpus: dict[str, set[int]] | None = None,
                      own_session: bool = False) -> LocalStack:
    """Start draft, target, then the coordinator; return once all three serve (ChildFailed
    as soon as one exits instead).
    dtype, threads: both services' (through the environment; None = the services' defaults).
    http_port: also serve the coordinator's OpenAI-compatible HTTP API (0 = any port).
    draft_args, target_args, coordinator_args: more flags for each process.
    cpus: {"draft": {0}, "target": {1}, …}: pin those processes to those CPUs.
    own_session: see spawn."""
    cpus = cpus or {}
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {}
    if threads is not None:
        env["SPECDEC_THREADS"] = str(threads)
    if dtype is not None:
        env["SPECDEC_DTYPE"] = dtype
    if cache_dir:
        env["SPECDEC_CACHE_DIR"] = cache_dir
    stack = LocalStack()
    try:
        for name, model, port in (("draft", draft_model, ports[0]),
                                  ("target", target_model, ports[1])):
            extra = ["--dtype", draft_dtype] if name == "draft" and draft_dtype else []
            extra += list(draft_args if name == "draft" else target_args)
            stack.processes.append(spawn(name, f"{name}_service",
                                         ["--model", model, "--port", str(port), *extra],
                                         log_dir, env, cpus.get(name), own_session))
        wait_all_serving(stack.processes, timeout_s)
        draft, target = stack.processes
        coordinator = spawn("coordinator", "coordinator",
                            ["--draft", f"127.0.0.1:{draft.port}",
                             "--target", f"127.0.0.1:{target.port}", "--port", str(ports[2]),
                             *([] if http_port is None else ["--http-port", str(http_port)]),
                             *coordinator_args],
                            log_dir, env, cpus.get("coordinator"), own_session)
        stack.processes.append(coordinator)
        wait_serving(coordinator, timeout_s)
    except BaseException:
        stack.stop()
        raise
    return stack
