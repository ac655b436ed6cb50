"""`xpud`: the node daemon — the emulated driver and management engine of one node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import math
import os
import re
import signal
import socket
import sys
import types
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI

import openxpu_runtime
from openxpu_runtime import __version__
from openxpu_runtime.clock import Clock, ManualClock, SystemClock
from openxpu_runtime.daemon import devnodes
from openxpu_runtime.daemon.app import create_app, create_workload_app
from openxpu_runtime.daemon.scopes import ScopeListeners, bind_unix
from openxpu_runtime.engine import Engine, Limits
from openxpu_runtime.errors import SELF_TEST_FAILED_EXIT, CommandLineParser
from openxpu_runtime.paths import HostPaths, probe_socket
from openxpu_runtime.profiles import DEFAULT_PROFILE, ProfileError, load_profile
from openxpu_runtime.state import CorruptStateError, StateStore

log = logging.getLogger("xpud")

# Energy and temperature change every tick; saving them this often bounds what a crash loses.
PERSIST_EVERY_SECONDS = 15.0
LOCK_FILE = "xpud.lock"
PID_FILE = "xpud.pid"
# The admin socket: root only. Workloads never get it; each allocation gets its own scope
# socket (daemon/scopes.py).
DEFAULT_SOCKET_MODE = 0o600
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# A driver version whose pre-release names this identifier (0.3.0-faulty, 1.0.0-rc.1.faulty)
# is an emulated bad driver build: it installs, and its xpud fails the start-up self-test.
# It is how one rehearses a failed driver upgrade (docs/upgrades.md).
FAULTY_RELEASE = "faulty"


class StartupError(Exception):
    """xpud cannot start; the message is the one line the operator sees."""


class SelfTestFailed(StartupError):
    """The driver build itself is bad: restarting it cannot help (exit SELF_TEST_FAILED_EXIT)."""


def is_faulty_release(version: str | None) -> bool:
    _, dash, pre_release = (version or "").split("+", 1)[0].partition("-")
    return bool(dash) and FAULTY_RELEASE in re.split(r"[.-]", pre_release)


def self_test(driver_version: str | None) -> None:
    """The start-up self-test of the driver build, before xpud touches anything: the saved
    device state stays as the last good driver left it."""
    if is_faulty_release(driver_version):
        raise SelfTestFailed(
            f"driver {driver_version} failed its start-up self-test: it is an emulated faulty "
            f'release (pre-release tag "{FAULTY_RELEASE}"); device state untouched, install '
            "another driver version"
        )


class XpudServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        on_exit: Callable[[], None],
        scopes: ScopeListeners,
        workload_app: FastAPI,
    ) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._scopes = scopes
        self._workload_app = workload_app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        await self._scopes.attach(self, self._workload_app)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._scopes.stop()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        # Not super(): uvicorn re-raises the signal after serving, which would kill xpud
        # before it saves its state. A second SIGINT still forces the exit.
        self._on_exit()  # end event streams now rather than after the grace period
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def _interval(text: str) -> float:
    seconds = float(text)
    if not (math.isfinite(seconds) and 0.01 <= seconds <= 60):
        raise argparse.ArgumentTypeError(f"{text!r} is not an interval from 0.01 to 60 seconds")
    return seconds


def _node_name(text: str) -> str:
    if not NODE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a node name")
    return text


def _file_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file mode like 0660")
    return mode


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
    p = CommandLineParser(prog="xpud", description=__doc__)
    p.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("XPU_ROOT", "/")),
        help="host root holding run/openxpu, var/lib/openxpu and dev (default /)",
    )
    p.add_argument("--socket", type=Path, help="API socket (default ROOT/run/openxpu/xpud.sock)")
    p.add_argument(
        "--socket-mode",
        type=_file_mode,
        default=DEFAULT_SOCKET_MODE,
        help=f"permissions of the API socket, octal (default {DEFAULT_SOCKET_MODE:o})",
    )
    p.add_argument(
        "--scopes-dir",
        type=Path,
        help="where each allocation's socket directory goes (default ROOT/run/openxpu/scopes)",
    )
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
        type=_node_name,
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
    p.add_argument("--tick", type=_interval, default=1.0, help="telemetry update interval, seconds")
    p.add_argument("--driver-version", help="reported driver version (default: the saved one)")
    recovery = p.add_mutually_exclusive_group()
    recovery.add_argument(
        "--reset-state",
        action="store_true",
        help="move the saved state aside and start with fresh devices",
    )
    recovery.add_argument(
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
    p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
    args = p.parse_args(argv)
    paths = HostPaths(args.root)
    args.socket = args.socket or paths.socket
    args.scopes_dir = args.scopes_dir or paths.scopes_dir
    args.state_dir = args.state_dir or paths.state_dir
    args.device_dir = args.device_dir or paths.device_dir
    return args


def lock_state_dir(state_dir: Path) -> int:
    """Hold the state directory for the life of this process (the kernel drops the lock when
    it exits, however it exits): one xpud per state, and nothing touched before that is sure."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(
            f"another xpud (pid {holder}) holds {path}; stop it first (xpu-driver uninstall, "
            "or end that process)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def socket_in_use(path: Path) -> bool:
    try:
        probe_socket(path)
    except OSError:
        return False
    return True


def listen(path: Path, mode: int) -> socket.socket:
    """Bind the API socket ourselves: its mode is set before anyone can connect, and its
    inode tells us at exit whether the path is still ours to remove."""
    if socket_in_use(path):
        raise StartupError(f"another xpud is serving {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # stale: nothing answered on it above
    try:
        return bind_unix(path, mode)
    except OSError as exc:
        raise StartupError(f"cannot listen on {path}: {exc}") from None


def remove_if_ours(path: Path, inode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_ino == inode:
            path.unlink()


def remove_pidfile(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == str(os.getpid()):
            path.unlink()


async def tick_loop(engine: Engine, interval: float) -> None:
    since_persist = 0.0
    while True:
        await asyncio.sleep(interval)
        engine.advance()
        since_persist += interval
        if since_persist >= PERSIST_EVERY_SECONDS:
            engine.persist()
            since_persist = 0.0


async def serve(
    engine: Engine, sock: socket.socket, scopes: ScopeListeners, tick: float, log_level: str
) -> None:
    app = create_app(engine, scopes)
    workload_app = create_workload_app(engine, app)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )

    def end_streams() -> None:
        app.state.streams.close_all()
        workload_app.state.streams.close_all()

    server = XpudServer(config, end_streams, scopes, workload_app)
    ticker = None
    if not isinstance(engine.clock, ManualClock):
        ticker = asyncio.create_task(tick_loop(engine, tick))
    try:
        await server.serve(sockets=[sock])
    finally:
        if ticker:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        engine.advance()
        engine.persist()
        if engine.store:
            engine.store.checkpoint()


def start(args: argparse.Namespace) -> tuple[Engine, socket.socket, ScopeListeners]:
    """Everything before serving, in the one order that is safe: the self-test (it touches
    nothing), then the lock."""
    self_test(args.driver_version)
    lock_state_dir(args.state_dir)  # held until exit: the fd is never closed
    store = StateStore(args.state_dir / "state.json")
    profile = load_profile(args.profile, args.count)
    if args.reset_state:
        aside = store.reset()
        if aside:
            log.warning("previous state moved to %s", aside)
    if args.restore_backup:
        if not store.backup_path.exists():
            raise StartupError(f"no backup at {store.backup_path} to restore")
        try:
            store.restore_backup()
        except (ValueError, CorruptStateError) as exc:  # ValueError: not JSON, or not UTF-8
            raise StartupError(
                f"backup {store.backup_path} is corrupt ({exc}); "
                "start with --reset-state to begin with fresh devices"
            ) from None
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
    sock = listen(args.socket, args.socket_mode)
    scopes = ScopeListeners(args.scopes_dir)
    for scope_id in engine.scopes:  # kept across the restart: their containers still run
        try:
            scopes.bind(scope_id)
        except OSError as exc:
            raise StartupError(f"cannot listen on {scopes.path(scope_id)}: {exc}") from None
    pidfile = args.socket.parent / PID_FILE
    pidfile.write_text(str(os.getpid()))
    log.info(
        "xpud %s from %s: node %s, %d x %s, driver %s, socket %s",
        __version__,
        Path(openxpu_runtime.__file__).parent,
        engine.node,
        profile.count,
        profile.product,
        engine.driver_version,
        args.socket,
    )
    return engine, sock, scopes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # a bad command line: one line, exit 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s xpud %(message)s")
    try:
        engine, sock, scopes = start(args)
    except SelfTestFailed as exc:
        print(f"xpud: {exc}", file=sys.stderr)
        return SELF_TEST_FAILED_EXIT
    except (StartupError, ProfileError, CorruptStateError, OSError) as exc:
        print(f"xpud: {exc}", file=sys.stderr)
        return 2
    inode = args.socket.stat().st_ino
    try:
        asyncio.run(serve(engine, sock, scopes, args.tick, args.log_level))
    finally:
        # Leave nothing a client or the installer could mistake for a live daemon.
        remove_if_ours(args.socket, inode)
        remove_pidfile(args.socket.parent / PID_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
