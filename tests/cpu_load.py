"""Run a command while busy-looping processes keep every core busy: a slow, loaded machine
anyone can reproduce (`make test-stress` runs the default suite this way).

python tests/cpu_load.py [--hogs N] -- COMMAND [ARG ...]

N defaults to one per core. The hogs run at normal priority, so the command gets about
1 / (1 + N / cores) of the machine. They are stopped when the command ends, however it
ends, and the command's exit status is returned.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys


def spin() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the command; we stop these
    while True:
        pass


def main() -> int:
    p = argparse.ArgumentParser(prog="python tests/cpu_load.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hogs", type=int, default=os.cpu_count() or 1,
                   help="busy-looping processes (default: one per core)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command given (put it after --)")
    hogs = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    print(f"cpu_load: {args.hogs} busy-looping processes on {os.cpu_count()} cores while "
          f"running: {' '.join(command)}", flush=True)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.join()


if __name__ == "__main__":
    sys.exit(main())
