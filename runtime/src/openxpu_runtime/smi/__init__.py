"""`xpu-smi`: the XPU management CLI, shaped like nvidia-smi.

xpu-smi                     device table and processes
xpu-smi -q [-i 0]           every reading of each device
xpu-smi --json              the telemetry snapshot for scripts
xpu-smi -l 1                repeat every second
xpu-smi processes           which process holds what
xpu-smi inject-fault -i 0 --code 48
xpu-smi clear-fault -i 0 [--code 48]
xpu-smi events              follow health events

Exit codes: 0 done, 2 bad arguments or refused by xpud, 6 no devices were found,
9 xpud unreachable, 130 interrupted, 141 the reader of the output went away.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from openxpu_runtime import __version__
from openxpu_runtime.errors import Unreachable, XpuError
from openxpu_runtime.faults import CATALOG
from openxpu_runtime.paths import default_socket
from openxpu_runtime.smi import render
from openxpu_runtime.smi.reader import XpudReader

# nvidia-smi's exit codes; scripts already test for them.
EXIT_NO_DEVICES = 6
EXIT_NO_DRIVER = 9
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool killed by SIGPIPE
RECONNECT_SECONDS = 30.0


def _number(minimum: float, *, inclusive: bool) -> Callable[[str], float]:
    relation = ">=" if inclusive else ">"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {relation} {minimum:g}, not {text!r}"
            )
        return value

    return parse


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return value


def _emit(lines: list[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()  # a loop's reports reach a pipe as they happen


def _selected(snapshot: render.Reading, ids: list[str] | None) -> list[render.Reading]:
    devices: list[render.Reading] = snapshot["devices"]
    if not ids:
        return devices
    wanted = set(ids)
    chosen = [d for d in devices if str(d["index"]) in wanted or d["uuid"] in wanted]
    missing = wanted - {str(d["index"]) for d in chosen} - {d["uuid"] for d in chosen}
    if missing:
        raise XpuError(f"no such device: {', '.join(sorted(missing))}")
    return chosen


def show(xpud: XpudReader, args: argparse.Namespace) -> int:
    snapshot = xpud.get("/v1/telemetry")
    if not snapshot["devices"]:
        _emit([json.dumps(snapshot)] if args.json else ["No devices were found"])
        return EXIT_NO_DEVICES
    devices = _selected(snapshot, args.id)
    if args.json:
        data = {**snapshot, "devices": devices}
        _emit([json.dumps(data, indent=2 if sys.stdout.isatty() else None)])
        return 0
    product = {d["uuid"]: d["product"] for d in xpud.get("/v1/inventory")["devices"]}
    if args.query:
        _emit(render.detail(devices, product))
    else:
        _emit([*render.device_table(snapshot, devices, product), *render.process_table(devices)])
    return 0


def run(args: argparse.Namespace) -> int:
    socket: Path = args.socket or default_socket()
    if args.command in ("inject-fault", "clear-fault", "events"):
        from openxpu_runtime.smi import control  # the full client: only these need it

        if args.command == "inject-fault":
            message = control.inject_fault(
                socket, args.id, args.code, args.sticky, args.recover_after, args.message
            )
            _emit([message])
        elif args.command == "clear-fault":
            _emit([control.clear_fault(socket, args.id, args.code)])
        else:
            control.follow_events(socket, args.reconnect_timeout)
        return 0
    with XpudReader(socket) as xpud:
        if args.command == "processes":
            if args.json:
                _emit([json.dumps(xpud.get("/v1/processes"))])
            else:
                _emit(render.process_table(xpud.get("/v1/telemetry")["devices"]))
            return 0
        for n in range(args.iterations or sys.maxsize):
            if n:
                time.sleep(args.loop)
            code = show(xpud, args)
            if code or not args.loop:
                return code
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="xpu-smi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--socket", type=Path, help="xpud socket (default $XPUD_SOCKET or /run/openxpu/xpud.sock)"
    )
    p.add_argument("-i", "--id", action="append", help="device index or UUID (repeatable)")
    p.add_argument("-q", "--query", action="store_true", help="show every reading")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "-l",
        "--loop",
        type=_number(0, inclusive=True),
        default=0,
        metavar="SEC",
        help="repeat every SEC seconds until interrupted",
    )
    p.add_argument("--iterations", type=_count, help="with -l: stop after N reports")
    sub = p.add_subparsers(dest="command")
    codes = ", ".join(f"{k.code} {k.name} ({k.severity.name.lower()})" for k in CATALOG.values())
    inject = sub.add_parser(
        "inject-fault", help="inject a fault into a device", description=f"Known codes: {codes}"
    )
    inject.add_argument("-i", "--id", required=True, help="device index or UUID")
    inject.add_argument("--code", type=int, required=True)
    stick = inject.add_mutually_exclusive_group()
    stick.add_argument("--sticky", action="store_true", default=None, help="hold until cleared")
    stick.add_argument(
        "--recover-after",
        type=_number(0, inclusive=False),
        metavar="SEC",
        help="recover by itself after SEC seconds",
    )
    inject.add_argument("--message", default="")
    clear = sub.add_parser("clear-fault", help="clear a device's faults (a device reset)")
    clear.add_argument("-i", "--id", required=True, help="device index or UUID")
    clear.add_argument("--code", type=int, help="only this code")
    procs = sub.add_parser("processes", help="list the processes holding devices")
    # SUPPRESS: an unset subcommand flag must not undo `xpu-smi --json processes`.
    procs.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    events = sub.add_parser("events", help="follow the health-event stream (JSON lines)")
    events.add_argument(
        "--reconnect-timeout",
        type=_number(0, inclusive=True),
        default=RECONNECT_SECONDS,
        metavar="SEC",
        help="when xpud goes away, keep trying to reconnect for SEC seconds, then exit 9 "
        f"(default {RECONNECT_SECONDS:g})",
    )
    args = p.parse_args(argv)
    if args.command == "inject-fault" and args.recover_after is not None:
        args.sticky = False
    return args


def _quiet_stdout() -> None:
    """The reader left (`| head`): point stdout at /dev/null so the interpreter's last flush
    does not fail again on the way out."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except Unreachable as exc:
        print(
            f"xpu-smi has failed because it couldn't communicate with xpud: {exc}", file=sys.stderr
        )
        return EXIT_NO_DRIVER
    except XpuError as exc:
        print(f"xpu-smi: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
