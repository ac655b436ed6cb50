"""`xpud`: the node daemon — the emulated driver and management engine of one node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import sys
import types
from collections.abc import Callable
from pathlib import Path

import uvicorn

from openxpu_runtime import __version__
from openxpu_runtime.clock import Clock, ManualClock, SystemClock
from openxpu_runtime.daemon import devnodes
from openxpu_runtime.daemon.app import create_app
from openxpu_runtime.engine import Engine, Limits
from openxpu_runtime.paths import HostPaths, probe_socket
from openxpu_runtime.profiles import DEFAULT_PROFILE, ProfileError, load_profile
from openxpu_runtime.state import CorruptStateError, StateStore

log = logging.getLogger("xpud")

# Energy and temperature change every tick; saving them this often bounds what a crash loses.
PERSIST_EVERY_SECONDS = 15.0


class XpudServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        # Not super(): uvicorn re-raises the signal after serving, which would kill xpud
        # before it saves its state. A second SIGINT still forces the exit.
        self._on_exit()  # end event streams now rather than after the grace period
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def positive(convert: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xpud", description=__doc__)
    p.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("XPU_ROOT", "/")),
        help="host root holding run/openxpu, var/lib/openxpu and dev (default /)",
    )
    p.add_argument("--socket", type=Path, help="API socket (default ROOT/run/openxpu/xpud.sock)")
    p.add_argument("--state-dir", type=Path, help="default ROOT/var/lib/openxpu")
    p.add_argument("--device-dir", type=Path, help="where /dev/xpuN nodes go (default ROOT/dev)")
    p.add_argument(
        "--device-nodes",
        choices=["char", "file", "none"],
        default=devnodes.default_kind(),
        help="character devices (root), plain files (unprivileged), or none",
    )
    p.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME") or socket.gethostname(),
        help="node name; device UUIDs derive from it (default $NODE_NAME or hostname)",
    )
    p.add_argument(
        "--profile",
        default=os.environ.get("XPU_PROFILE", DEFAULT_PROFILE),
        help="built-in profile name or JSON file",
    )
    p.add_argument("--count", type=int, help="override the profile's device count")
    p.add_argument("--seed", type=int, default=0, help="seed of the telemetry noise")
    p.add_argument(
        "--clock",
        choices=["system", "manual"],
        default="system",
        help="manual: time moves only through POST /v1/clock/advance (tests)",
    )
    p.add_argument("--tick", type=float, default=1.0, help="telemetry update interval, seconds")
    p.add_argument("--driver-version", help="reported driver version (default: the saved one)")
    p.add_argument(
        "--reset-state",
        action="store_true",
        help="move the saved state aside and start with fresh devices",
    )
    p.add_argument(
        "--restore-backup", action="store_true", help="start from the last good state backup"
    )
    defaults = Limits()
    p.add_argument(
        "--default-lease",
        type=positive(float),
        default=defaults.default_lease_seconds,
        help="seconds a context opened without a lease lives without a call (default %(default)s)",
    )
    p.add_argument("--max-contexts", type=positive(int), default=defaults.max_contexts)
    p.add_argument(
        "--max-allocations",
        type=positive(int),
        default=defaults.max_allocations_per_context,
        help="live allocations per context (default %(default)s)",
    )
    p.add_argument(
        "--max-queued-launches",
        type=positive(int),
        default=defaults.max_queued_launches_per_context,
        help="launches a context may have queued (default %(default)s)",
    )
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    paths = HostPaths(args.root)
    args.socket = args.socket or paths.socket
    args.state_dir = args.state_dir or paths.state_dir
    args.device_dir = args.device_dir or paths.device_dir
    return args


def socket_in_use(path: Path) -> bool:
    try:
        probe_socket(path)
    except OSError:
        return False
    return True


async def tick_loop(engine: Engine, interval: float) -> None:
    since_persist = 0.0
    while True:
        await asyncio.sleep(interval)
        engine.advance()
        since_persist += interval
        if since_persist >= PERSIST_EVERY_SECONDS:
            engine.persist()
            since_persist = 0.0


async def serve(engine: Engine, sock: Path, tick: float, log_level: str) -> None:
    app = create_app(engine)
    config = uvicorn.Config(
        app,
        uds=str(sock),
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = XpudServer(config, on_exit=app.state.streams.close_all)
    ticker = None
    if not isinstance(engine.clock, ManualClock):
        ticker = asyncio.create_task(tick_loop(engine, tick))
    try:
        await server.serve()
    finally:
        if ticker:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        engine.advance()
        engine.persist()
        if engine.store:
            engine.store.checkpoint()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s xpud %(message)s")
    store = StateStore(args.state_dir / "state.json")
    try:
        profile = load_profile(args.profile, args.count)
        if args.reset_state:
            aside = store.reset()
            if aside:
                log.warning("previous state moved to %s", aside)
        if args.restore_backup:
            store.restore_backup()
        if socket_in_use(args.socket):
            raise RuntimeError(f"another xpud is serving {args.socket}")
        clock: Clock = ManualClock() if args.clock == "manual" else SystemClock()
        engine = Engine(
            node=args.node,
            profile=profile,
            clock=clock,
            seed=args.seed,
            driver_version=args.driver_version,
            limits=Limits(
                args.default_lease,
                args.max_contexts,
                args.max_allocations,
                args.max_queued_launches,
            ),
            store=store,
            device_dir=args.device_dir,
        )
        devnodes.create(args.device_dir, profile.count, args.device_nodes)
    except (ProfileError, CorruptStateError, RuntimeError, OSError) as exc:
        print(f"xpud: {exc}", file=sys.stderr)
        return 2
    args.socket.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        args.socket.unlink()  # stale: nothing answered on it above
    log.info(
        "xpud %s: node %s, %d x %s, driver %s, socket %s",
        __version__,
        engine.node,
        profile.count,
        profile.product,
        engine.driver_version,
        args.socket,
    )
    asyncio.run(serve(engine, args.socket, args.tick, args.log_level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
