"""`xpu-smi`: the XPU management CLI, shaped like nvidia-smi.

xpu-smi                     device table and processes
xpu-smi -q [-i 0]           every reading of each device
xpu-smi --json              the telemetry snapshot for scripts
xpu-smi -l 1                repeat every second
xpu-smi processes           which process holds what
xpu-smi inject-fault -i 0 --code 48
xpu-smi clear-fault -i 0 [--code 48]
xpu-smi events              follow health events
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from openxpu_runtime import __version__, api
from openxpu_runtime.client import XpudClient
from openxpu_runtime.errors import Unreachable, XpuError
from openxpu_runtime.faults import CATALOG

# nvidia-smi's exit code when it cannot talk to the driver; scripts already test for it.
EXIT_NO_DRIVER = 9
MIB = 1024 * 1024
HEALTH_STYLE = {"Healthy": "green", "Degraded": "yellow", "Unhealthy": "red", "Lost": "bold red"}


def _selected(snapshot: api.Telemetry, ids: list[str] | None) -> list[api.DeviceTelemetry]:
    if not ids:
        return snapshot.devices
    wanted = set(ids)
    chosen = [d for d in snapshot.devices if str(d.index) in wanted or d.uuid in wanted]
    missing = wanted - {str(d.index) for d in chosen} - {d.uuid for d in chosen}
    if missing:
        raise XpuError(f"no such device: {', '.join(sorted(missing))}")
    return chosen


def device_table(
    snapshot: api.Telemetry, devices: list[api.DeviceTelemetry], product: dict[str, str]
) -> Table:
    table = Table(
        title=f"XPU-SMI {__version__}   Driver Version: {snapshot.driver_version}   "
        f"Node: {snapshot.node}   {time.strftime('%c', time.localtime(snapshot.timestamp))}",
        title_justify="left",
    )
    for column in ("XPU", "Name", "UUID", "Memory-Usage", "Util", "Temp", "Power", "Health"):
        table.add_column(column, justify="right" if column in ("XPU", "Util") else "left")
    for d in devices:
        table.add_row(
            str(d.index),
            product.get(d.uuid, "?"),
            d.uuid,
            f"{d.memory_used_bytes // MIB}MiB / {d.memory_total_bytes // MIB}MiB",
            f"{d.utilization_ratio:.0%}",
            "N/A" if d.temperature_celsius is None else f"{d.temperature_celsius:.0f}C",
            f"{d.power_watts:.0f}W / {d.power_limit_watts:.0f}W",
            f"[{HEALTH_STYLE.get(d.health, '')}]{d.health}[/]",
        )
    return table


def process_table(devices: list[api.DeviceTelemetry]) -> Table:
    table = Table(title="Processes", title_justify="left")
    for column in ("XPU", "PID", "Process name", "Context", "XPU Memory"):
        table.add_column(column)
    for d in devices:
        for p in d.processes:
            table.add_row(
                str(d.index), str(p.pid), p.name, p.context_id, f"{p.memory_used_bytes // MIB}MiB"
            )
    if not table.rows:
        table.add_row("", "", "No running processes found", "", "")
    return table


def detail(console: Console, devices: list[api.DeviceTelemetry], product: dict[str, str]) -> None:
    for d in devices:
        console.print(f"[bold]XPU {d.index}[/]  {d.uuid}")
        rows: list[tuple[str, object]] = [
            ("Product Name", product.get(d.uuid, "?")),
            ("Health", f"{d.health} {d.health_reason}".strip()),
            ("Utilization", f"{d.utilization_ratio:.1%} (matrix {d.matrix_utilization_ratio:.1%})"),
            ("Memory Total", f"{d.memory_total_bytes // MIB} MiB"),
            ("Memory Used", f"{d.memory_used_bytes // MIB} MiB"),
            ("Memory Free", f"{d.memory_free_bytes // MIB} MiB"),
            (
                "Temperature",
                "N/A" if d.temperature_celsius is None else f"{d.temperature_celsius:.1f} C",
            ),
            ("Power Draw", f"{d.power_watts:.1f} W (limit {d.power_limit_watts:.0f} W)"),
            ("Energy", f"{d.energy_joules:.1f} J"),
            (
                "Clocks",
                f"{d.clock_mhz:.0f} MHz (max {d.max_clock_mhz}), memory {d.memory_clock_mhz} MHz",
            ),
            ("Throttle Reasons", ", ".join(d.throttle_reasons) or "none"),
            (
                "ECC Errors",
                f"corrected {d.ecc_corrected_total}, uncorrected {d.ecc_uncorrected_total}",
            ),
            ("Errors by code", ", ".join(f"{c}: {n}" for c, n in d.errors_total.items()) or "none"),
            (
                "Active Faults",
                ", ".join(
                    f"{f.code} {f.name}" + (" (sticky)" if f.sticky else "")
                    for f in d.active_faults
                )
                or "none",
            ),
            ("Pending Work", f"{d.pending_ops:.3g} ops"),
        ]
        for key, value in rows:
            console.print(f"    {key:<18}: {value}")
        console.print()


def show(client: XpudClient, console: Console, args: argparse.Namespace) -> None:
    snapshot = client.telemetry()
    devices = _selected(snapshot, args.id)
    if args.json:
        data = snapshot.model_copy(update={"devices": devices}).model_dump()
        console.print_json(json.dumps(data)) if console.is_terminal else print(json.dumps(data))
        return
    product = {d.uuid: d.product for d in client.inventory().devices}
    if args.query:
        detail(console, devices, product)
    else:
        console.print(device_table(snapshot, devices, product))
        console.print(process_table(devices))


def run(args: argparse.Namespace, console: Console) -> int:
    with XpudClient(args.socket) as client:
        if args.command == "inject-fault":
            done = client.inject_fault(
                api.FaultRequest(
                    device=args.id,
                    code=args.code,
                    sticky=args.sticky,
                    recover_after_seconds=args.recover_after,
                    message=args.message,
                )
            )
            console.print(
                f"XPU {args.id}: injected {done.code} {done.name} ({done.severity}); "
                f"health is now {done.health}"
            )
        elif args.command == "clear-fault":
            cleared = client.clear_faults(args.id, args.code)
            console.print(
                f"XPU {args.id}: cleared {cleared.cleared or 'nothing'}; "
                f"health is now {cleared.health}"
            )
        elif args.command == "processes":
            contexts = client.processes()
            if args.json:
                print(json.dumps([c.model_dump() for c in contexts]))
            else:
                console.print(process_table(client.telemetry().devices))
        elif args.command == "events":
            for event in client.events():
                print(event.model_dump_json(), flush=True)
        else:
            for n in range(args.iterations or sys.maxsize):
                if n:
                    time.sleep(args.loop)
                show(client, console, args)
                if not args.loop:
                    break
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="xpu-smi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--socket", type=Path, help="xpud socket (default $XPUD_SOCKET or /run/openxpu/xpud.sock)"
    )
    p.add_argument("-i", "--id", action="append", help="device index or UUID (repeatable)")
    p.add_argument("-q", "--query", action="store_true", help="show every reading")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "-l",
        "--loop",
        type=float,
        default=0,
        metavar="SEC",
        help="repeat every SEC seconds until interrupted",
    )
    p.add_argument("--iterations", type=int, default=0, help="with -l: stop after N reports")
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
        "--recover-after", type=float, metavar="SEC", help="recover by itself after SEC seconds"
    )
    inject.add_argument("--message", default="")
    clear = sub.add_parser("clear-fault", help="clear a device's faults (a device reset)")
    clear.add_argument("-i", "--id", required=True, help="device index or UUID")
    clear.add_argument("--code", type=int, help="only this code")
    procs = sub.add_parser("processes", help="list the processes holding devices")
    procs.add_argument("--json", action="store_true")
    sub.add_parser("events", help="follow the health-event stream (JSON lines)")
    args = p.parse_args(argv)
    if args.command == "inject-fault" and args.recover_after is not None:
        args.sticky = False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Piped output keeps whole rows, the way scripts grepping nvidia-smi expect.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    try:
        return run(args, console)
    except Unreachable as exc:
        print(
            f"xpu-smi has failed because it couldn't communicate with xpud: {exc}", file=sys.stderr
        )
        return EXIT_NO_DRIVER
    except XpuError as exc:
        print(f"xpu-smi: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
