"""`openxpu-operator`: run the operator, print its CRD, render operands for a policy.

Exit codes: 0 success, 1 runtime failure, 2 bad input (usage, an invalid policy file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from openxpu_operator import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    p = argparse.ArgumentParser(
        prog="openxpu-operator",
        description="The OpenXPU operator: reconciles an XPUClusterPolicy into the XPU stack.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}
    del sub
    return p, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = _parser()
    args = parser.parse_args(argv)
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
