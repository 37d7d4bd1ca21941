"""python -m specdec serve …: draft, target and coordinator in one command (specdec/serve.py)."""

import sys

COMMANDS = {"serve": "draft, target and coordinator on this machine, until Ctrl-C"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        listing = "\n".join(f"  {name}  {what}" for name, what in COMMANDS.items())
        print(f"usage: python -m specdec COMMAND [--help]\ncommands:\n{listing}",
              file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    from .serve import main as serve

    return serve(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
