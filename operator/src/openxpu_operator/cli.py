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


# Rendering a policy file for inspection: it has no uid until the API server stores it.
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def _render(args: argparse.Namespace) -> int:
    import yaml

    from openxpu_operator.policy import PolicyError, load_policy
    from openxpu_operator.render import RenderContext, render_operands, to_yaml

    try:
        with open(args.policy) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        print(f"error: {args.policy}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except yaml.YAMLError as exc:
        print(f"error: {args.policy}: not valid YAML: {exc}".replace("\n", " "), file=sys.stderr)
        return EXIT_BAD_INPUT
    if not isinstance(data, dict):
        print(f"error: {args.policy}: not an XPUClusterPolicy object", file=sys.stderr)
        return EXIT_BAD_INPUT
    meta = data.setdefault("metadata", {}) or {}
    data["metadata"] = {"name": "default", "uid": args.uid or PLACEHOLDER_UID, **meta}
    try:
        policy = load_policy(data)
    except PolicyError as exc:
        print(f"error: {args.policy}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    context = RenderContext(namespace=args.namespace, nodes=tuple(args.node))
    sys.stdout.write(to_yaml(render_operands(policy, context)))
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
    render = sub.add_parser(
        "render",
        help="render the operands of a policy file to stdout (YAML), in apply order",
    )
    render.add_argument("policy", help="XPUClusterPolicy YAML file")
    render.add_argument("--namespace", default="openxpu", help="operand namespace")
    render.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME",
        help="an XPU node, for the per-node workload validation (repeatable)",
    )
    render.add_argument("--uid", help="owner uid, when the file has no metadata.uid")
    render.set_defaults(run=_render)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Command = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
