"""`openxpu-exporter`: serve XPU metrics for Prometheus (the dcgm-exporter of OpenXPU)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import uvicorn

from openxpu_exporter import __version__
from openxpu_exporter.app import create_app
from openxpu_exporter.collector import UnknownMetricError, check_metric_names
from openxpu_exporter.config import (
    DEFAULT_KUBELET_SOCKET,
    DEFAULT_PORT,
    ConfigError,
    load,
    parse_listen,
)


def _listen(value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="openxpu-exporter",
        description=__doc__,
        epilog="Every setting can also come from --config FILE (YAML, same names with "
        "underscores) or OPENXPU_EXPORTER_<NAME> variables; flags win.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--config", type=Path, help="YAML file of settings")
    p.add_argument(
        "-a", "--listen", type=_listen, help=f"HOST:PORT to serve on (default :{DEFAULT_PORT})"
    )
    p.add_argument("--xpud-socket", type=Path, help="xpud API socket (default $XPUD_SOCKET)")
    p.add_argument(
        "--kubelet-socket",
        type=Path,
        help=f"PodResources socket (default {DEFAULT_KUBELET_SOCKET})",
    )
    p.add_argument(
        "--pod-attribution",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="label devices with the pod holding them (default on)",
    )
    p.add_argument(
        "--dcgm-compat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also emit dcgm-exporter names and labels (DCGM_FI_*) (default off)",
    )
    p.add_argument(
        "--native",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="emit the native openxpu_* metrics (default on)",
    )
    p.add_argument(
        "--refresh-interval",
        type=float,
        help="seconds between background reads of xpud; 0 reads on every scrape (default 1)",
    )
    p.add_argument(
        "--attribution-interval", type=float, help="seconds between PodResources lists (default 5)"
    )
    p.add_argument("--hostname", help="value of the hostname label (default $NODE_NAME)")
    p.add_argument(
        "--disable-metric",
        action="append",
        dest="disabled_metrics",
        metavar="NAME",
        help="leave a metric out (repeatable; native or DCGM name)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s openxpu-exporter %(message)s"
    )
    # httpx logs every request at INFO, so each read of xpud (one a second) would be a line;
    # they are shown at debug only.
    logging.getLogger("httpx").setLevel(
        logging.DEBUG if args.log_level == "debug" else logging.WARNING
    )
    overrides: dict[str, Any] = {
        "xpud_socket": args.xpud_socket,
        "kubelet_socket": args.kubelet_socket,
        "pod_attribution": args.pod_attribution,
        "dcgm_compat": args.dcgm_compat,
        "native": args.native,
        "refresh_interval": args.refresh_interval,
        "attribution_interval": args.attribution_interval,
        "hostname": args.hostname,
        "disabled_metrics": args.disabled_metrics,
    }
    if args.listen:
        overrides["host"], overrides["port"] = args.listen
    try:
        config = load(args.config, overrides)
        check_metric_names(config.disabled_metrics)
    except (ConfigError, UnknownMetricError) as exc:
        print(f"openxpu-exporter: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level=args.log_level,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
