"""dcgm-exporter compatibility: the same readings under DCGM field names, units and labels.

Units and types follow dcgm-exporter's default counters (etc/default-counters.csv upstream):
percent for GPU_UTIL, MiB for framebuffer memory, MHz for clocks, millijoules for energy (a
counter), the last XID as a gauge. A field DCGM reads as an integer (DCGM_FT_INT64) is an int
here and printed without a decimal point, as dcgm-exporter prints it, rounded as NVML rounds
(runtime/nvml). Labels follow its Kubernetes mode: gpu, UUID, pci_bus_id, device, modelName,
Hostname, DCGM_FI_DRIVER_VERSION, and pod/namespace/container when a pod holds the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from openxpu_runtime import api
from openxpu_runtime.faults import CATALOG
from openxpu_runtime.identity import bus_id

MIB = 1 << 20

# NVML clocks-event (throttle) reason bits, as DCGM_FI_DEV_CLOCK_THROTTLE_REASONS reports them.
THROTTLE_BITS = {
    "idle": 0x1,  # GpuIdle
    "hw_thermal_slowdown": 0x40,  # HwThermalSlowdown
    "hw_thermal_shutdown": 0x8,  # HwSlowdown: the hardware's last resort before shutdown
}
THROTTLE_AS_BITS = "`openxpu_clock_throttle_active` as NVML bits: " + ", ".join(
    f"{reason} {bit:#x}" for reason, bit in THROTTLE_BITS.items()
)


# NVIDIA's XID texts (docs.nvidia.com/deploy/xid-errors) for the codes whose fault means the
# same here, as dcgm-exporter's err_msg label carries them; other codes take our catalog's text.
XID_MESSAGES = {
    0: "No Error",
    13: "Graphics Engine Exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    48: "Double Bit ECC Error",
    63: "ECC page retirement or row remapping recording event",
    74: "NVLINK Error",
    79: "GPU has fallen off the bus",
    94: "Contained ECC error",
    95: "Uncontained ECC error",
}


def xid_labels(code: int) -> dict[str, str]:
    """dcgm-exporter's labels on DCGM_FI_DEV_XID_ERRORS for the last XID."""
    kind = CATALOG.get(code)
    message = XID_MESSAGES.get(code) or (kind.description if kind else "Unknown Error")
    return {"err_code": str(code), "err_msg": message}


class DcgmField(NamedTuple):
    name: str
    # As dcgm-exporter declares it: "gauge" or "counter" (the DCGM name, no _total suffix).
    kind: str
    help: str
    # An int for a field DCGM reads as an integer; None: no reading, no sample.
    value: Callable[[api.DeviceTelemetry], int | float | None]
    native: str  # the same reading in native names, for users translating queries
    unit: str


def nvml_round(x: float) -> int:
    """Half away from zero, never below 0: how runtime/nvml (Rust's f64::round) rounds."""
    return math.floor(max(x, 0.0) + 0.5)


def throttle_bitmask(reasons: list[str]) -> int:
    mask = 0
    for reason in reasons:
        mask |= THROTTLE_BITS.get(reason, 0)
    return mask


def _rounded(reading: float | None) -> int | None:
    return None if reading is None else nvml_round(reading)


FIELDS: tuple[DcgmField, ...] = (
    DcgmField(
        "DCGM_FI_DEV_GPU_UTIL",
        "gauge",
        "GPU utilization (in %).",
        lambda d: nvml_round(d.utilization_ratio * 100.0),
        native="`round(openxpu_utilization_ratio * 100)`",
        unit="%",
    ),
    DcgmField(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "gauge",
        "Ratio of time the graphics engine is active.",
        lambda d: d.utilization_ratio,
        native="`openxpu_utilization_ratio`",
        unit="ratio",
    ),
    DcgmField(
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "gauge",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
        lambda d: d.matrix_utilization_ratio,
        native="`openxpu_matrix_utilization_ratio`",
        unit="ratio",
    ),
    DcgmField(
        "DCGM_FI_DEV_FB_USED",
        "gauge",
        "Framebuffer memory used (in MiB).",
        lambda d: d.memory_used_bytes // MIB,
        native="`floor(openxpu_memory_used_bytes / 2^20)`",
        unit="MiB",
    ),
    DcgmField(
        "DCGM_FI_DEV_FB_FREE",
        "gauge",
        "Framebuffer memory free (in MiB).",
        lambda d: d.memory_free_bytes // MIB,
        native="`floor(openxpu_memory_free_bytes / 2^20)`",
        unit="MiB",
    ),
    DcgmField(
        "DCGM_FI_DEV_FB_TOTAL",
        "gauge",
        "Framebuffer memory total (in MiB).",
        lambda d: d.memory_total_bytes // MIB,
        native="`floor(openxpu_memory_total_bytes / 2^20)`",
        unit="MiB",
    ),
    DcgmField(
        "DCGM_FI_DEV_GPU_TEMP",
        "gauge",
        "GPU temperature (in C).",
        lambda d: _rounded(d.temperature_celsius),
        native="`round(openxpu_temperature_celsius)`",
        unit="°C",
    ),
    DcgmField(
        "DCGM_FI_DEV_POWER_USAGE",
        "gauge",
        "Power draw (in W).",
        lambda d: d.power_watts,
        native="`openxpu_power_watts`",
        unit="W",
    ),
    DcgmField(
        "DCGM_FI_DEV_POWER_MGMT_LIMIT",
        "gauge",
        "Power management limit (in W).",
        lambda d: d.power_limit_watts,
        native="`openxpu_power_limit_watts`",
        unit="W",
    ),
    DcgmField(
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "Total energy consumption since boot (in mJ).",
        lambda d: nvml_round(d.energy_joules * 1000.0),
        native="`round(openxpu_energy_joules_total * 1000)`",
        unit="mJ",
    ),
    DcgmField(
        "DCGM_FI_DEV_SM_CLOCK",
        "gauge",
        "SM clock frequency (in MHz).",
        lambda d: nvml_round(d.clock_mhz),
        native="`round(openxpu_clock_hertz / 1e6)`",
        unit="MHz",
    ),
    DcgmField(
        "DCGM_FI_DEV_MEM_CLOCK",
        "gauge",
        "Memory clock frequency (in MHz).",
        lambda d: d.memory_clock_mhz,
        native="`openxpu_memory_clock_hertz / 1e6`",
        unit="MHz",
    ),
    # The same bitmask under its old name and DCGM >= 3.3's, which renamed throttle to event.
    *(
        DcgmField(
            name,
            "gauge",
            f"Current clock {what} reasons (bitmask of NVML clocks-event reasons).",
            lambda d: throttle_bitmask(d.throttle_reasons),
            native=THROTTLE_AS_BITS,
            unit="bitmask",
        )
        for name, what in (
            ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "throttle"),
            ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "event"),
        )
    ),
    DcgmField(
        "DCGM_FI_DEV_XID_ERRORS",
        "gauge",
        "Value of the last XID error encountered.",
        lambda d: d.last_error_code,
        native="`openxpu_last_error_code`; labels `err_code`, `err_msg`",
        unit="code",
    ),
    DcgmField(
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "counter",
        "Total number of single-bit volatile ECC errors.",
        lambda d: d.ecc_corrected_total,
        native="`openxpu_ecc_corrected_errors_total`",
        unit="count",
    ),
    DcgmField(
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "counter",
        "Total number of double-bit volatile ECC errors.",
        lambda d: d.ecc_uncorrected_total,
        native="`openxpu_ecc_uncorrected_errors_total`",
        unit="count",
    ),
)


def device_labels(
    device: api.DeviceTelemetry, model: str, hostname: str, driver_version: str
) -> dict[str, str]:
    return {
        "gpu": str(device.index),
        "UUID": device.uuid,
        "pci_bus_id": bus_id(device.index),
        "device": f"xpu{device.index}",
        "modelName": model,
        "Hostname": hostname,
        "DCGM_FI_DRIVER_VERSION": driver_version,
    }


def markdown_table() -> str:
    """The DCGM names and their native equivalents, as docs/exporter.md shows them."""
    rows = ["| DCGM name | type | native equivalent | unit |", "| --- | --- | --- | --- |"]
    rows += [f"| `{f.name}` | {f.kind} | {f.native} | {f.unit} |" for f in FIELDS]
    return "\n".join(rows) + "\n"
