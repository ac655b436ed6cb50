"""nvidia-smi's plain-text layout for xpud's readings (JSON as served, no models)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from openxpu_runtime import __version__

MIB = 1024 * 1024
Reading = dict[str, Any]


def grid(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[str]) -> list[str]:
    """A boxed table; columns named in `right` are right-aligned (numbers)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if h in right else c.ljust(w)
            for c, w, h in zip(cells, widths, headers, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    return [rule, line(headers), rule.replace("-", "="), *map(line, rows), rule]


def na(value: object, fmt: str) -> str:
    """A reading as nvidia-smi prints it, or N/A where the device has none (a lost one)."""
    return "N/A" if value is None else fmt.format(value)


def device_table(snapshot: Reading, devices: list[Reading], product: dict[str, str]) -> list[str]:
    stamp = time.strftime("%c", time.localtime(snapshot["timestamp"]))
    title = (
        f"XPU-SMI {__version__}   Driver Version: {snapshot['driver_version']}   "
        f"Node: {snapshot['node']}   {stamp}"
    )
    rows = [
        [
            str(d["index"]),
            product.get(d["uuid"], "?"),
            d["uuid"],
            f"{d['memory_used_bytes'] // MIB}MiB / {d['memory_total_bytes'] // MIB}MiB",
            f"{d['utilization_ratio']:.0%}",
            na(d["temperature_celsius"], "{:.0f}C"),
            f"{d['power_watts']:.0f}W / {d['power_limit_watts']:.0f}W",
            d["health"],
        ]
        for d in devices
    ]
    headers = ("XPU", "Name", "UUID", "Memory-Usage", "Util", "Temp", "Power", "Health")
    return [title, *grid(headers, rows, right={"XPU", "Util", "Temp"})]


def process_table(devices: list[Reading]) -> list[str]:
    rows = [
        [
            str(d["index"]),
            str(p["pid"]),
            p["name"],
            p["context_id"],
            f"{p['memory_used_bytes'] // MIB}MiB",
        ]
        for d in devices
        for p in d["processes"]
    ] or [["", "", "No running processes found", "", ""]]
    headers = ("XPU", "PID", "Process name", "Context", "XPU Memory")
    return ["Processes", *grid(headers, rows, right={"XPU", "PID", "XPU Memory"})]


def detail(devices: list[Reading], product: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for d in devices:
        faults = ", ".join(
            f"{f['code']} {f['name']}" + (" (sticky)" if f["sticky"] else "")
            for f in d["active_faults"]
        )
        rows: list[tuple[str, object]] = [
            ("Product Name", product.get(d["uuid"], "?")),
            ("Health", f"{d['health']} {d['health_reason']}".strip()),
            (
                "Utilization",
                f"{d['utilization_ratio']:.1%} (matrix {d['matrix_utilization_ratio']:.1%})",
            ),
            ("Memory Total", f"{d['memory_total_bytes'] // MIB} MiB"),
            ("Memory Used", f"{d['memory_used_bytes'] // MIB} MiB"),
            ("Memory Free", f"{d['memory_free_bytes'] // MIB} MiB"),
            ("Temperature", na(d["temperature_celsius"], "{:.1f} C")),
            ("Power Draw", f"{d['power_watts']:.1f} W (limit {d['power_limit_watts']:.0f} W)"),
            ("Energy", f"{d['energy_joules']:.1f} J"),
            (
                "Clocks",
                f"{d['clock_mhz']:.0f} MHz (max {d['max_clock_mhz']}), "
                f"memory {d['memory_clock_mhz']} MHz",
            ),
            ("Throttle Reasons", ", ".join(d["throttle_reasons"]) or "none"),
            (
                "ECC Errors",
                f"corrected {d['ecc_corrected_total']}, uncorrected {d['ecc_uncorrected_total']}",
            ),
            (
                "Errors by code",
                ", ".join(f"{c}: {n}" for c, n in d["errors_total"].items()) or "none",
            ),
            ("Active Faults", faults or "none"),
            ("Pending Work", f"{d['pending_ops']:.3g} ops"),
        ]
        lines.append(f"XPU {d['index']}  {d['uuid']}")
        lines.extend(f"    {key:<18}: {value}" for key, value in rows)
        lines.append("")
    return lines
