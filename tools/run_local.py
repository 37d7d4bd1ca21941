"""make run: the three services on loopback until Ctrl-C; `python -m specdec serve` with
make run's options (specdec/serve.py does the work).

python -m tools.run_local [--draft M] [--target M] [--dtype D] [--threads N]
                          [--ports DRAFT,TARGET,COORDINATOR] [--http-port P] [--log-dir DIR]
"""

import argparse
import sys

from specdec.fetch import DEFAULT_DRAFT, DEFAULT_TARGET
from specdec.serve import main as serve


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tools.run_local", description=__doc__)
    p.add_argument("--draft", default=DEFAULT_DRAFT, help="draft model")
    p.add_argument("--target", default=DEFAULT_TARGET, help="target model")
    p.add_argument("--dtype", default="bfloat16", help="dtype of both models")
    p.add_argument("--threads", type=int, default=2, help="torch threads per service")
    p.add_argument("--ports", default="50051,50052,50050", help="draft,target,coordinator")
    p.add_argument("--http-port", type=int, default=8000,
                   help="the coordinator's OpenAI-compatible HTTP API; -1 = off")
    p.add_argument("--log-dir", default="results/logs")
    args = p.parse_args()
    draft_port, target_port, port = args.ports.split(",")
    return serve(["--draft", args.draft, "--target", args.target, "--dtype", args.dtype,
                  "--threads", str(args.threads), "--draft-port", draft_port,
                  "--target-port", target_port, "--port", port,
                  "--http-port", str(args.http_port), "--log-dir", args.log_dir])


if __name__ == "__main__":
    sys.exit(main())
