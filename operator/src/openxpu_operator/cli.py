"""`openxpu-operator`: print the CRD, render operands for a policy (and, later, run).

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

Command = Callable[[argparse.Namespace], int]


def _crd(args: argparse.Namespace) -> int:
    from openxpu_operator.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openxpu-operator",
        description="The OpenXPU operator: reconciles an XPUClusterPolicy into the XPU stack.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    crd = sub.add_parser("crd", help="print the XPUClusterPolicy CRD (YAML)")
    crd.set_defaults(run=_crd)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Command = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
