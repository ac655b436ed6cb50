"""nvidia-smi's query interface over xpud's readings: `--query-gpu`, `--query-compute-apps`
and `--format=csv[,noheader][,nounits]`, with nvidia-smi's field names, units and `[N/A]`.

Every value follows what the NVML library (runtime/nvml) answers for the same device, so a
script sees the same numbers through nvidia-smi as a program sees through NVML.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from openxpu_runtime.errors import XpuError
from openxpu_runtime.identity import bus_id, pci_location, serial

Reading = dict[str, Any]
MIB = 1 << 20
NA = "[N/A]"  # what nvidia-smi prints for a feature the device lacks (NVML: NOT_SUPPORTED)
LOST = "[GPU is lost]"  # a reading of a device that fell off the bus (NVML: GPU_IS_LOST)
# Not a PCI-SIG vendor: the emulated XPU's PCI identity ("XP"), as in the NVML library.
PCI_VENDOR_ID = 0x5850
FORMAT_OPTIONS = ("csv", "noheader", "nounits")

# nvmlClocksEventReason* bits, by nvidia-smi's field names.
REASON_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
}
# xpud's throttle reasons as NVML reports them (runtime/nvml/src/lib.rs reasons_of).
XPUD_REASONS = {"idle": 0x1, "hw_thermal_slowdown": 0x40, "hw_thermal_shutdown": 0x8}
SUPPORTED_REASONS = 0x1 | 0x8 | 0x40


def half_up(x: float) -> int:
    """NVML's integers from xpud's floats: rounded half away from zero (never negative)."""
    return math.floor(max(x, 0.0) + 0.5)


def watts(value: float) -> str:
    """NVML reports milliwatts; nvidia-smi prints them as watts with two decimals."""
    return f"{half_up(value * 1000) / 1000:.2f}"


@dataclass(frozen=True)
class Device:
    """One device as a query sees it: xpud's reading and inventory entry, and the system."""

    reading: Reading
    info: Reading
    driver_version: str
    count: int
    now: float

    @property
    def lost(self) -> bool:
        return bool(self.reading["health"] == "Lost")

    def reasons(self) -> int:
        bits = 0
        for reason in self.reading["throttle_reasons"]:
            bits |= XPUD_REASONS.get(reason, 0)
        return bits


Subject = TypeVar("Subject")


@dataclass(frozen=True)
class Field(Generic[Subject]):
    names: tuple[str, ...]  # nvidia-smi's name (printed in the header), then its aliases
    read: Callable[[Subject], str]
    unit: str = ""
    live: bool = False  # a reading of the device: a lost device has none

    @property
    def name(self) -> str:
        return self.names[0]


def timestamp(now: float) -> str:
    """nvidia-smi's "YYYY/MM/DD HH:MM:SS.msec", local time."""
    return (
        time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    )


def _na(_: Device) -> str:
    return NA


def _const(text: str) -> Callable[[Device], str]:
    return lambda _: text


def _mib(key: str) -> Callable[[Device], str]:
    return lambda d: str(int(d.reading[key]) // MIB)


def _reason(bit: int) -> Callable[[Device], str]:
    def read(d: Device) -> str:
        if not bit & SUPPORTED_REASONS:
            return NA
        return "Active" if d.reasons() & bit else "Not Active"

    return read


def _pstate(d: Device) -> str:
    return "P8" if d.reasons() & REASON_BITS["gpu_idle"] else "P0"


def _pci_id(d: Device) -> str:
    family = "".join(c for c in str(d.info["family"]) if c.isdigit()) or "0"
    return f"0x{(int(family) << 16) | PCI_VENDOR_ID:08X}"


def _gpu_fields() -> list[Field[Device]]:
    def f(
        names: str, read: Callable[[Device], str], unit: str = "", live: bool = False
    ) -> Field[Device]:
        return Field(tuple(names.split("|")), read, unit, live)

    def ecc(kind: str) -> Callable[[Device], str]:
        return lambda d: str(d.reading[f"ecc_{kind}_total"])

    fields = [
        f("timestamp", lambda d: timestamp(d.now)),
        f("driver_version", lambda d: d.driver_version),
        f("count", lambda d: str(d.count)),
        f("name|gpu_name", lambda d: str(d.info["product"])),
        f("serial|gpu_serial", lambda d: serial(d.info["uuid"])),
        f("uuid|gpu_uuid", lambda d: str(d.info["uuid"])),
        f("pci.bus_id|gpu_bus_id", lambda d: bus_id(d.info["index"])),
        f("pci.domain", lambda d: f"0x{pci_location(d.info['index'])[0]:04X}"),
        f("pci.bus", lambda d: f"0x{pci_location(d.info['index'])[1]:02X}"),
        f("pci.device", lambda d: f"0x{pci_location(d.info['index'])[2]:02X}"),
        f("pci.device_id", _pci_id),
        f("pci.sub_device_id", _pci_id),
        f("index", lambda d: str(d.info["index"])),
        f("display_mode", _const("Disabled")),
        f("display_active", _const("Disabled")),
        # xpud keeps every device initialised whether or not a client is attached.
        f("persistence_mode", _const("Enabled")),
        f("pstate", _pstate, live=True),
        f(
            "clocks_event_reasons.supported|clocks_throttle_reasons.supported",
            _const(f"0x{SUPPORTED_REASONS:016X}"),
        ),
        f(
            "clocks_event_reasons.active|clocks_throttle_reasons.active",
            lambda d: f"0x{d.reasons():016X}",
            live=True,
        ),
        *(
            f(
                f"clocks_event_reasons.{name}|clocks_throttle_reasons.{name}",
                _reason(bit),
                live=True,
            )
            for name, bit in REASON_BITS.items()
        ),
        f("memory.total", _mib("memory_total_bytes"), "MiB", live=True),
        f("memory.reserved", _const("0"), "MiB", live=True),
        f("memory.used", _mib("memory_used_bytes"), "MiB", live=True),
        f("memory.free", _mib("memory_free_bytes"), "MiB", live=True),
        f("compute_mode", _const("Default")),
        f(
            "utilization.gpu",
            lambda d: str(half_up(d.reading["utilization_ratio"] * 100)),
            "%",
            live=True,
        ),
        # Memory-controller activity is not modelled: 0, as the NVML library reports.
        f("utilization.memory", _const("0"), "%", live=True),
        f("ecc.mode.current", _const("Enabled")),
        f("ecc.mode.pending", _const("Enabled")),
        f("temperature.gpu", lambda d: str(half_up(d.reading["temperature_celsius"])), live=True),
        f("power.management", _const("Enabled")),
        f("power.draw", lambda d: watts(d.reading["power_watts"]), "W", live=True),
        f("power.draw.average", lambda d: watts(d.reading["power_watts"]), "W", live=True),
        f("power.draw.instant", lambda d: watts(d.reading["power_watts"]), "W", live=True),
    ]
    # The limit is the board's TDP and cannot be changed: every limit is that one value.
    for name in (
        "power.limit",
        "enforced.power.limit",
        "power.default_limit",
        "power.min_limit",
        "power.max_limit",
    ):
        fields.append(f(name, lambda d: watts(d.reading["power_limit_watts"]), "W", live=True))
    current = lambda d: str(half_up(d.reading["clock_mhz"]))  # noqa: E731
    maximum = lambda d: str(d.info["max_clock_mhz"])  # noqa: E731
    memory = lambda d: str(d.reading["memory_clock_mhz"])  # noqa: E731
    fields += [
        f("clocks.current.graphics|clocks.gr", current, "MHz", live=True),
        f("clocks.current.sm|clocks.sm", current, "MHz", live=True),
        f("clocks.current.memory|clocks.mem", memory, "MHz", live=True),
        # Application clocks cannot be set: their target and default are the maximum.
        f("clocks.applications.graphics|clocks.applications.gr", maximum, "MHz", live=True),
        f("clocks.applications.memory|clocks.applications.mem", memory, "MHz", live=True),
        f(
            "clocks.default_applications.graphics|clocks.default_applications.gr",
            maximum,
            "MHz",
            live=True,
        ),
        f(
            "clocks.default_applications.memory|clocks.default_applications.mem",
            memory,
            "MHz",
            live=True,
        ),
        f("clocks.max.graphics|clocks.max.gr", maximum, "MHz", live=True),
        f("clocks.max.sm", maximum, "MHz", live=True),
        f("clocks.max.memory|clocks.max.mem", memory, "MHz", live=True),
    ]
    # xpud keeps lifetime counts across restarts: volatile and aggregate agree; only device
    # memory has ECC in the model.
    for kind in ("corrected", "uncorrected"):
        for scope in ("volatile", "aggregate"):
            for where in ("device_memory", "dram", "total"):
                fields.append(f(f"ecc.errors.{kind}.{scope}.{where}", ecc(kind), live=True))
            for where in ("register_file", "l1_cache", "l2_cache", "texture_memory", "cbu", "sram"):
                fields.append(f(f"ecc.errors.{kind}.{scope}.{where}", _na))
    # Fields nvidia-smi knows that an XPU has no answer for: no PCIe link, fans, media
    # engines, firmware, MIG, vGPU or accounting (docs/compat.md says why).
    for names, unit in (
        ("vgpu_driver_capability.heterogenous_multivGPU", ""),
        ("vgpu_device_capability.fractional_multiVgpu", ""),
        ("vgpu_device_capability.heterogeneous_timeSlice_profile", ""),
        ("vgpu_device_capability.heterogeneous_timeSlice_sizes", ""),
        ("pcie.link.gen.current", ""),
        ("pcie.link.gen.gpucurrent", ""),
        ("pcie.link.gen.max", ""),
        ("pcie.link.gen.gpumax", ""),
        ("pcie.link.gen.hostmax", ""),
        ("pcie.link.width.current", ""),
        ("pcie.link.width.max", ""),
        ("addressing_mode", ""),
        ("accounting.mode", ""),
        ("accounting.buffer_size", ""),
        ("driver_model.current", ""),
        ("driver_model.pending", ""),
        ("vbios_version", ""),
        ("inforom.img|inforom.image", ""),
        ("inforom.oem", ""),
        ("inforom.ecc", ""),
        ("inforom.pwr|inforom.power", ""),
        ("reset_status.reset_required", ""),
        ("reset_status.drain_and_reset_recommended", ""),
        ("gom.current|gpu_operation_mode.current", ""),
        ("gom.pending|gpu_operation_mode.pending", ""),
        ("fan.speed", "%"),
        ("compute_cap", ""),
        ("utilization.encoder", "%"),
        ("utilization.decoder", "%"),
        ("utilization.jpeg", "%"),
        ("utilization.ofa", "%"),
        ("encoder.stats.sessionCount", ""),
        ("encoder.stats.averageFps", ""),
        ("encoder.stats.averageLatency", ""),
        ("retired_pages.single_bit_ecc.count|retired_pages.sbe", ""),
        ("retired_pages.double_bit.count|retired_pages.dbe", ""),
        ("retired_pages.pending", ""),
        ("temperature.gpu.tlimit", ""),
        ("temperature.memory", ""),
        ("clocks.current.video|clocks.video", "MHz"),
        ("mig.mode.current", ""),
        ("mig.mode.pending", ""),
        ("gsp.mode.current", ""),
        ("gsp.mode.default", ""),
        ("protected_memory.total", "MiB"),
        ("protected_memory.used", "MiB"),
        ("protected_memory.free", "MiB"),
        ("fabric.state", ""),
        ("fabric.status", ""),
    ):
        fields.append(f(names, _na, unit))
    return fields


@dataclass(frozen=True)
class App:
    """One process holding memory on one device (`--query-compute-apps`)."""

    device: Device
    process: Reading


def _app_fields() -> list[Field[App]]:
    def f(names: str, read: Callable[[App], str], unit: str = "") -> Field[App]:
        return Field(tuple(names.split("|")), read, unit)

    return [
        f("timestamp", lambda a: timestamp(a.device.now)),
        f("gpu_name", lambda a: str(a.device.info["product"])),
        f("gpu_bus_id", lambda a: bus_id(a.device.info["index"])),
        f("gpu_serial", lambda a: serial(a.device.info["uuid"])),
        f("gpu_uuid", lambda a: str(a.device.info["uuid"])),
        f("pid", lambda a: str(a.process["pid"])),
        f("process_name|name", lambda a: str(a.process["name"])),
        f(
            "used_gpu_memory|used_memory",
            lambda a: str(a.process["memory_used_bytes"] // MIB),
            "MiB",
        ),
    ]


GPU_FIELDS = {name: field for field in _gpu_fields() for name in field.names}
APP_FIELDS = {name: field for field in _app_fields() for name in field.names}


@dataclass(frozen=True)
class Format:
    header: bool = True
    units: bool = True


def parse_format(text: str | None, switch: str) -> Format:
    if text is None:
        raise XpuError(f'"--format" is required with "{switch}": --format=csv[,noheader][,nounits]')
    options = [o.strip() for o in text.split(",")]
    unknown = [o for o in options if o not in FORMAT_OPTIONS]
    if unknown or "csv" not in options:
        bad = f'"{unknown[0]}" is not a valid format option; ' if unknown else ""
        raise XpuError(f"{bad}--format takes csv[,noheader][,nounits]")
    return Format(header="noheader" not in options, units="nounits" not in options)


def parse_fields(text: str, known: dict[str, Field[Subject]]) -> list[Field[Subject]]:
    fields: list[Field[Subject]] = []
    for name in (n.strip() for n in text.split(",")):
        if name not in known:
            raise XpuError(f'Field "{name}" is not a valid field to query.')
        fields.append(known[name])
    return fields


def header(fields: Sequence[Field[Any]], fmt: Format) -> str:
    return ", ".join(f"{f.name} [{f.unit}]" if f.unit and fmt.units else f.name for f in fields)


def value(field: Field[Subject], subject: Subject, fmt: Format, lost: bool = False) -> str:
    if field.live and lost:
        return LOST
    text = field.read(subject)
    if text == NA or not field.unit or not fmt.units:
        return text
    return f"{text} {field.unit}"


def devices(snapshot: Reading, inventory: Reading, chosen: Iterable[Reading]) -> list[Device]:
    info = {d["uuid"]: d for d in inventory["devices"]}
    now = time.time()  # nvidia-smi's timestamp is when the query was made
    count = len(snapshot["devices"])
    return [
        Device(d, info[d["uuid"]], snapshot["driver_version"], count, now)
        for d in chosen
        if d["uuid"] in info
    ]


def gpu_rows(fields: Sequence[Field[Device]], chosen: Sequence[Device], fmt: Format) -> list[str]:
    return [", ".join(value(f, d, fmt, d.lost) for f in fields) for d in chosen]


def app_rows(fields: Sequence[Field[App]], chosen: Sequence[Device], fmt: Format) -> list[str]:
    return [
        ", ".join(value(f, App(d, p), fmt) for f in fields)
        for d in chosen
        for p in d.reading["processes"]
    ]


def list_gpus(chosen: Sequence[Device]) -> list[str]:
    """`nvidia-smi -L`."""
    return [f"GPU {d.info['index']}: {d.info['product']} (UUID: {d.info['uuid']})" for d in chosen]
