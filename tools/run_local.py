"""make run: the three services on loopback until Ctrl-C.

python -m tools.run_local [--draft M] [--target M] [--dtype D] [--threads N]
"""

import argparse
import signal
import threading
from pathlib import Path

from specdec.fetch import DEFAULT_DRAFT, DEFAULT_TARGET
from specdec.launch import start_local_stack


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tools.run_local", description=__doc__)
    p.add_argument("--draft", default=DEFAULT_DRAFT, help="draft model")
    p.add_argument("--target", default=DEFAULT_TARGET, help="target model")
    p.add_argument("--dtype", default="bfloat16", help="dtype of both models")
    p.add_argument("--threads", type=int, default=2, help="torch threads per service")
    p.add_argument("--ports", default="50051,50052,50050", help="draft,target,coordinator")
    p.add_argument("--http-port", type=int, default=8000,
                   help="the coordinator's OpenAI-compatible HTTP API; -1 = off")
    p.add_argument("--log-dir", type=Path, default=Path("results/logs"))
    args = p.parse_args()
    ports = tuple(int(x) for x in args.ports.split(","))
    print(f"starting draft {args.draft} and target {args.target} (logs in {args.log_dir}/) ...",
          flush=True)
    stack = start_local_stack(args.draft, args.target, log_dir=args.log_dir, ports=ports,
                              dtype=args.dtype, threads=args.threads,
                              http_port=None if args.http_port < 0 else args.http_port)
    names = ", ".join(f"{p.name} 127.0.0.1:{p.port}" for p in stack.processes)
    print(f"serving: {names}\ntry: .venv/bin/python -m coordinator.client --addr {stack.addr} "
          f"\"def fib(n):\"", flush=True)
    http = stack.processes[-1].http_port
    if http:
        print(f"or:  curl -s http://127.0.0.1:{http}/v1/chat/completions -H 'Content-Type: "
              f"application/json' -d '{{\"model\": \"{args.target}\", \"messages\": "
              f"[{{\"role\": \"user\", \"content\": \"Reverse a string in Python\"}}]}}'",
              flush=True)
    print("Ctrl-C stops all three.", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        dead = [p for p in stack.processes if p.proc.poll() is not None]
        if dead:
            print(f"{dead[0].name} exited with {dead[0].proc.returncode}; see {dead[0].log_path}")
            break
    print("stopping ...", flush=True)
    print("exit codes:", dict(zip([p.name for p in reversed(stack.processes)], stack.stop(),
                                  strict=True)), flush=True)


if __name__ == "__main__":
    main()
