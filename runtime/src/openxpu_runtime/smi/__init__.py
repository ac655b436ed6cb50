"""`xpu-smi`: the XPU management CLI, shaped like nvidia-smi.

xpu-smi                     device table and processes
xpu-smi -q [-i 0]           every reading of each device
xpu-smi --json              the telemetry snapshot for scripts
xpu-smi -l 1                repeat every second
xpu-smi processes           which process holds what
xpu-smi inject-fault -i 0 --code 48
xpu-smi clear-fault -i 0 [--code 48]
xpu-smi events              follow health events
xpu-smi --query-gpu=index,memory.used --format=csv[,noheader][,nounits]
xpu-smi --query-compute-apps=pid,process_name,gpu_uuid,used_memory --format=csv
xpu-smi -L                  one line per device
xpu-smi topo -m             link matrix, CPU and NUMA affinity
xpu-smi dmon|pmon [-c N]    a sample per second: devices / processes

-i takes indices, UUIDs, PCI bus ids or serials, comma-separated, on every command.
Run as `nvidia-smi` (a link of that name) it answers as nvidia-smi does.

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
from typing import Any

from openxpu_runtime import __version__
from openxpu_runtime.errors import Unreachable, XpuError
from openxpu_runtime.faults import CATALOG
from openxpu_runtime.paths import default_socket
from openxpu_runtime.smi import devices, monitor, query, render
from openxpu_runtime.smi.reader import XpudReader

# nvidia-smi's exit codes; scripts already test for them.
EXIT_NO_DEVICES = 6
EXIT_NO_DRIVER = 9
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool killed by SIGPIPE
RECONNECT_SECONDS = 30.0
NVIDIA_SMI = "nvidia-smi"
NAME_ENV = "XPU_SMI_NAME"
NVIDIA_SMI_NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


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


class View:
    """One look at xpud: its telemetry, and its inventory fetched once per command."""

    def __init__(self, xpud: XpudReader, ids: list[str]) -> None:
        self.xpud = xpud
        self.ids = ids
        self._inventory: render.Reading | None = None

    @property
    def inventory(self) -> render.Reading:
        if self._inventory is None:
            self._inventory = self.xpud.get("/v1/inventory")
        return self._inventory

    def snapshot(self) -> tuple[render.Reading, list[render.Reading]]:
        """xpud's telemetry and the selected devices' readings; NoDevices on a node with none."""
        snapshot = self.xpud.get("/v1/telemetry")
        if not snapshot["devices"]:
            raise NoDevices(snapshot)
        return snapshot, devices.select(snapshot["devices"], self.ids)

    def devices(self) -> list[query.Device]:
        snapshot, chosen = self.snapshot()
        return query.devices(snapshot, self.inventory, chosen)


class NoDevices(Exception):
    def __init__(self, snapshot: render.Reading) -> None:
        self.snapshot = snapshot


def show(view: View, args: argparse.Namespace, first: bool) -> None:
    if args.query_gpu or args.query_compute_apps:
        switch = "--query-gpu" if args.query_gpu else "--query-compute-apps"
        fmt = query.parse_format(args.format, switch)
        if args.query_gpu:
            gpu_fields = query.parse_fields(args.query_gpu, query.GPU_FIELDS)
            rows = query.gpu_rows(gpu_fields, view.devices(), fmt)
            head = query.header(gpu_fields, fmt)
        else:
            app_fields = query.parse_fields(args.query_compute_apps, query.APP_FIELDS)
            rows = query.app_rows(app_fields, view.devices(), fmt)
            head = query.header(app_fields, fmt)
        _emit([head, *rows] if fmt.header and first else rows)
        return
    if args.list_gpus:
        _emit(query.list_gpus(view.devices()))
        return
    snapshot, chosen = view.snapshot()
    if args.json:
        data = {**snapshot, "devices": chosen}
        _emit([json.dumps(data, indent=2 if sys.stdout.isatty() else None)])
        return
    product = {d["uuid"]: d["product"] for d in view.inventory["devices"]}
    if args.query:
        _emit(render.detail(chosen, product))
    else:
        _emit([*render.device_table(snapshot, chosen, product), *render.process_table(chosen)])


def sample(view: View, args: argparse.Namespace) -> None:
    """dmon / pmon: a header, then one sample every `-d` seconds, `-c` times (or until ^C)."""
    if args.command == "dmon":
        letters = monitor.groups(args.select or monitor.DMON_DEFAULT, monitor.DMON_GROUPS)
        head, rows = monitor.dmon_header(letters), monitor.dmon_rows
    else:
        letters = monitor.groups(args.select or monitor.PMON_DEFAULT, monitor.PMON_GROUPS)
        head, rows = monitor.pmon_header(letters), monitor.pmon_rows
    for n in range(args.count or sys.maxsize):
        if n:
            time.sleep(args.delay)
        chosen = view.devices()
        _emit([*(head if not n else []), *rows(letters, chosen)])


def topology(view: View) -> None:
    numa_nodes = 1 + max((d["numa_node"] for d in view.inventory["devices"]), default=0)
    _emit(monitor.topo_matrix(view.devices(), numa_nodes))


def act(socket: Path, view: View, args: argparse.Namespace) -> None:
    """inject-fault / clear-fault on every selected device, each named by its index."""
    from openxpu_runtime.smi import control as ctl  # the full client: only these need it

    if not view.ids:
        raise XpuError(f"{args.command} needs -i: the device(s) to act on")
    req = None
    if args.command == "inject-fault":
        req = ctl.fault_request(
            view.ids[0], args.code, args.sticky, args.recover_after, args.message
        )
    for d in devices.select(view.inventory["devices"], view.ids):
        ref = str(d["index"])
        if req is not None:
            _emit([ctl.inject_fault(socket, req.model_copy(update={"device": ref}))])
        else:
            _emit([ctl.clear_fault(socket, ref, args.code)])


def held(contexts: list[render.Reading], view: View) -> list[render.Reading]:
    """`processes --json` for the selected devices: the contexts on them, each with only
    those devices."""
    if not view.ids:
        return contexts
    uuids = {d["uuid"] for d in devices.select(view.inventory["devices"], view.ids)}
    mine = ({**c, "devices": [d for d in c["devices"] if d["uuid"] in uuids]} for c in contexts)
    return [c for c in mine if c["devices"]]


def run(args: argparse.Namespace) -> int:
    socket: Path = args.socket or default_socket()
    ids = devices.split_ids([*(args.id or []), *(getattr(args, "sub_id", None) or [])])
    if args.command == "events":
        from openxpu_runtime.smi import control as ctl

        uuids = None
        if ids:
            with XpudReader(socket) as xpud:
                chosen = devices.select(xpud.get("/v1/inventory")["devices"], ids)
            uuids = frozenset(d["uuid"] for d in chosen)
        ctl.follow_events(socket, args.reconnect_timeout, uuids)
        return 0
    with XpudReader(socket) as xpud:
        view = View(xpud, ids)
        try:
            if args.command in ("inject-fault", "clear-fault"):
                act(socket, view, args)
            elif args.command == "processes":
                if args.json:
                    _emit([json.dumps(held(xpud.get("/v1/processes"), view))])
                else:
                    _emit(render.process_table(view.snapshot()[1]))
            elif args.command in ("dmon", "pmon"):
                sample(view, args)
            elif args.command == "topo":
                topology(view)
            else:
                for n in range(args.iterations or sys.maxsize):
                    if n:
                        time.sleep(args.loop)
                    show(view, args, first=not n)
                    if not args.loop:
                        break
        except NoDevices as none:
            _emit([json.dumps(none.snapshot)] if args.json else ["No devices were found"])
            return EXIT_NO_DEVICES
    return 0


def _ids(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "-i",
        "--id",
        dest=dest,
        action="append",
        metavar="ID[,ID...]",
        help="devices by index, UUID, PCI bus id or serial, comma-separated (nvidia-smi's "
        "-i); repeated -i add to the selection",
    )


def _monitor_parser(sub: Any, name: str, groups: str, default: str, what: str) -> None:
    mon = sub.add_parser(name, help=f"{what}, one line per sample (nvidia-smi {name})")
    _ids(mon, "sub_id")
    mon.add_argument("-c", "--count", type=_count, help="stop after COUNT samples")
    mon.add_argument(
        "-d",
        "--delay",
        type=_number(0, inclusive=False),
        default=1.0,
        metavar="SEC",
        help="seconds between samples (default 1)",
    )
    mon.add_argument(
        "-s",
        "--select",
        metavar="LETTERS",
        help=f"metric groups among {groups} (default {default})",
    )


def parse_args(argv: list[str] | None, prog: str = "xpu-smi") -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--socket", type=Path, help="xpud socket (default $XPUD_SOCKET or /run/openxpu/xpud.sock)"
    )
    _ids(p, "id")
    what = p.add_mutually_exclusive_group()
    what.add_argument("-q", "--query", action="store_true", help="show every reading")
    what.add_argument(
        "-L", "--list-gpus", action="store_true", help="one line per device: index, name, UUID"
    )
    what.add_argument(
        "--query-gpu", metavar="FIELDS", help="nvidia-smi's device fields, with --format=csv"
    )
    what.add_argument(
        "--query-compute-apps",
        metavar="FIELDS",
        help="nvidia-smi's process fields (pid, process_name, gpu_uuid, used_memory, ...)",
    )
    p.add_argument("--format", metavar="csv[,noheader][,nounits]", help="for --query-*")
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
        "inject-fault", help="inject a fault into devices", description=f"Known codes: {codes}"
    )
    _ids(inject, "sub_id")
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
    clear = sub.add_parser("clear-fault", help="clear devices' faults (a device reset)")
    _ids(clear, "sub_id")
    clear.add_argument("--code", type=int, help="only this code")
    procs = sub.add_parser("processes", help="list the processes holding devices")
    _ids(procs, "sub_id")
    # SUPPRESS: an unset subcommand flag must not undo `xpu-smi --json processes`.
    procs.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    events = sub.add_parser("events", help="follow the health-event stream (JSON lines)")
    _ids(events, "sub_id")
    events.add_argument(
        "--reconnect-timeout",
        type=_number(0, inclusive=True),
        default=RECONNECT_SECONDS,
        metavar="SEC",
        help="when xpud goes away, keep trying to reconnect for SEC seconds, then exit 9 "
        f"(default {RECONNECT_SECONDS:g})",
    )
    topo = sub.add_parser("topo", help="the devices' topology (nvidia-smi topo -m)")
    topo.add_argument(
        "-m",
        "--matrix",
        action="store_true",
        required=True,
        help="the link matrix between devices, with CPU and NUMA affinity",
    )
    _ids(topo, "sub_id")
    _monitor_parser(
        sub,
        "dmon",
        "p (power, temperature), u (utilization), c (clocks), m (memory)",
        monitor.DMON_DEFAULT,
        "device readings",
    )
    _monitor_parser(
        sub, "pmon", "u (utilization), m (memory)", monitor.PMON_DEFAULT, "processes per device"
    )
    args = p.parse_args(argv)
    if args.command == "inject-fault" and args.recover_after is not None:
        args.sticky = False
    if args.json and (args.query_gpu or args.query_compute_apps or args.list_gpus):
        p.error("--json does not combine with -L or --query-*")
    if args.format and not (args.query_gpu or args.query_compute_apps):
        p.error("--format applies to --query-gpu and --query-compute-apps")
    return args


def _quiet_stdout() -> None:
    """The reader left (`| head`): point stdout at /dev/null so the interpreter's last flush
    does not fail again on the way out."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def invoked_as() -> str:
    """`nvidia-smi` when run under that name: a link named nvidia-smi to the xpu-smi script
    (argv[0]), or the driver's shell shim saying how it was called ($XPU_SMI_NAME)."""
    name = os.environ.get(NAME_ENV) or Path(sys.argv[0]).name
    return NVIDIA_SMI if name == NVIDIA_SMI else "xpu-smi"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    prog = prog or (invoked_as() if argv is None else "xpu-smi")
    args = parse_args(argv, prog)
    try:
        return run(args)
    except Unreachable as exc:
        if prog == NVIDIA_SMI:  # the line scripts test for, then why
            print(f"{NVIDIA_SMI_NO_DRIVER} ({exc})", file=sys.stderr)
        else:
            print(
                f"xpu-smi has failed because it couldn't communicate with xpud: {exc}",
                file=sys.stderr,
            )
        return EXIT_NO_DRIVER
    except XpuError as exc:
        print(exc if prog == NVIDIA_SMI else f"xpu-smi: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
