"""Entry points: `openxpu-device-plugin` and `openxpu-feature-discovery`.

Settings come from flags, then environment variables (OPENXPU_DEVICE_PLUGIN_*), then the
config file (`--config-file`), then defaults; see docs/device-plugin.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from openxpu_device_plugin.config import (
    CONFIG_FILE_ENV,
    LOG_LEVEL_ENV,
    PREFIX,
    SETTINGS,
    Config,
    ConfigError,
    ConfigSource,
    first_env,
)
from openxpu_runtime.settings import add_arguments

log = logging.getLogger("openxpu_device_plugin")


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Precedence: flag > environment variable > config file > default.",
    )
    p.add_argument(
        "--config-file",
        default=first_env(os.environ, CONFIG_FILE_ENV),
        help=f"YAML config (env {' or '.join(CONFIG_FILE_ENV)})",
    )
    add_arguments(p, PREFIX, SETTINGS)
    p.add_argument(
        "--log-level",
        default=(first_env(os.environ, LOG_LEVEL_ENV) or "info").lower(),
        choices=["debug", "info", "warning", "error"],
        help=f"env {' or '.join(LOG_LEVEL_ENV)}",
    )
    return p


def _source(args: argparse.Namespace) -> ConfigSource:
    return ConfigSource(
        file=Path(args.config_file) if args.config_file else None,
        env=dict(os.environ),
        flags={s.flag: getattr(args, s.flag) for s in SETTINGS},
    )


def _setup(args: argparse.Namespace) -> tuple[ConfigSource, Config]:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO; the xpud and API calls are ours to report.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    source = _source(args)
    try:
        return source, source.load()
    except ConfigError as exc:
        # At start there is no last good configuration to keep: refuse to run.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def plugin_main(argv: Sequence[str] | None = None) -> int:
    args = _parser(
        "openxpu-device-plugin",
        "Advertise this node's XPUs to the kubelet (device plugin API v1beta1): health from "
        "xpud, topology-aware allocation, time-slicing, CDI. SIGHUP reloads and re-registers.",
    ).parse_args(argv)
    source, config = _setup(args)
    from openxpu_device_plugin.plugin import DevicePlugin

    async def main() -> None:
        plugin = DevicePlugin(source, config)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, plugin.stop)
        loop.add_signal_handler(signal.SIGINT, plugin.stop)
        loop.add_signal_handler(signal.SIGHUP, plugin.hangup)
        await plugin.run()

    asyncio.run(main())
    return 0


def discovery_main(argv: Sequence[str] | None = None) -> int:
    p = _parser(
        "openxpu-feature-discovery",
        "Label this node with its XPUs (openxpu.io/xpu.product, .count, .memory, .family, "
        ".replicas, .sharing-strategy, openxpu.io/driver.version) and keep them current.",
    )
    p.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="this node (env NODE_NAME, from the downward API)",
    )
    p.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, else in-cluster")
    p.add_argument("--interval", type=float, default=60.0, help="re-label period, seconds")
    p.add_argument("--oneshot", action="store_true", help="label once and exit")
    args = p.parse_args(argv)
    if not args.node_name:
        p.error("--node-name (or env NODE_NAME) is required")
    source, config = _setup(args)
    from openxpu_device_plugin.discovery import FeatureDiscovery
    from openxpu_device_plugin.kube import KubeClient, KubeError, NodeName
    from openxpu_runtime.errors import XpuError

    async def main() -> int:
        try:
            kube = await KubeClient.connect(args.kubeconfig)
        except KubeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        fd = FeatureDiscovery(source, config, kube, NodeName(args.node_name), args.interval)
        try:
            if args.oneshot:
                try:
                    await fd.label_once()
                except (KubeError, XpuError) as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                return 0
            task = asyncio.current_task()
            assert task is not None
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, task.cancel)
            try:
                await fd.run()
            except asyncio.CancelledError:
                log.info("feature discovery stopped")
            return 0
        finally:
            await kube.aclose()

    return asyncio.run(main())


if __name__ == "__main__":
    raise SystemExit(plugin_main())
