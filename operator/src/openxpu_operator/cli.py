"""`openxpu-operator`: print the CRD, render operands for a policy, run the operator, diagnose.

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


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import os

    from openxpu_operator.controller import Settings

    # kopf declares its timers at import: the interval must be in place before.
    os.environ["OPENXPU_OPERATOR_RESYNC_SECONDS"] = str(args.resync_seconds)
    from openxpu_operator.runner import RunOptions, run

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per API request or per node event would drown what matters.
    for noisy in ("httpx", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    options = RunOptions(
        settings=Settings(
            namespace=args.namespace,
            resync_seconds=args.resync_seconds,
            cleanup_timeout=args.cleanup_timeout,
        ),
        lease_name=args.lease_name,
        lease_seconds=args.lease_seconds,
        identity=args.identity or "",
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
        liveness=f"http://{args.metrics_address}:{args.liveness_port}/healthz"
        if args.liveness_port
        else "",
    )
    try:
        return asyncio.run(run(options))
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # a clear line, not a traceback: the pod log shows it
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _diagnose(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from openxpu_operator.diagnose import explain, gather
    from openxpu_operator.kube import Kube

    async def collect() -> list[dict[str, object]]:
        kube = Kube.from_environment()
        try:
            return await gather(kube, args.namespace, Path(args.bundle))
        finally:
            await kube.close()

    try:
        policies = asyncio.run(collect())
    except Exception as exc:
        print(f"error: cannot gather from the cluster: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if not policies:
        print("no XPUClusterPolicy in the cluster")
    for policy in policies:
        print(explain(policy))
    print(f"debug bundle: {args.bundle}")
    return EXIT_OK


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


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
    run = sub.add_parser("run", help="run the operator (kopf) against the current cluster")
    run.add_argument("--namespace", default="openxpu", help="operand and Lease namespace")
    run.add_argument("--resync-seconds", type=_positive, default=60.0, help="periodic resync")
    run.add_argument(
        "--cleanup-timeout",
        type=_positive,
        default=120.0,
        help="seconds a policy deletion waits for the per-node cleanup pods before giving up",
    )
    run.add_argument("--lease-name", default="openxpu-operator")
    run.add_argument("--lease-seconds", type=int, default=15)
    run.add_argument("--identity", help="this replica's Lease identity (default: host-pid)")
    run.add_argument("--metrics-address", default="0.0.0.0")
    run.add_argument("--metrics-port", type=int, default=8080, help="/metrics (0: off)")
    run.add_argument("--liveness-port", type=int, default=8081, help="/healthz (0: off)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(run=_run)
    diagnose = sub.add_parser(
        "diagnose", help="explain each policy's status and write a debug bundle (tar.gz)"
    )
    diagnose.add_argument("--namespace", default="openxpu", help="operand namespace")
    diagnose.add_argument(
        "--bundle", default="openxpu-debug.tar.gz", help="where to write the bundle"
    )
    diagnose.set_defaults(run=_diagnose)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Command = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
