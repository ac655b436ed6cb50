"""dcgm-exporter compatibility: the same readings under DCGM field names, units and labels.

Units follow dcgm-exporter's default counters (etc/default-counters.csv upstream): percent for
GPU_UTIL, MiB for framebuffer memory, MHz for clocks, millijoules for energy, the last XID as
a gauge. Labels follow its Kubernetes mode: gpu, UUID, device, modelName, Hostname,
DCGM_FI_DRIVER_VERSION, and pod/namespace/container when a pod holds the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from openxpu_runtime import api

MIB = float(1 << 20)

# NVML clocks-event (throttle) reason bits, as DCGM_FI_DEV_CLOCK_THROTTLE_REASONS reports them.
THROTTLE_BITS = {
    "idle": 0x1,  # GpuIdle
    "hw_thermal_slowdown": 0x40,  # HwThermalSlowdown
    "hw_thermal_shutdown": 0x8,  # HwSlowdown: the hardware's last resort before shutdown
}
THROTTLE_AS_BITS = "`openxpu_clock_throttle_active` as NVML bits: " + ", ".join(
    f"{reason} {bit:#x}" for reason, bit in THROTTLE_BITS.items()
)


class DcgmField(NamedTuple):
    name: str
    # "gauge", or "unknown" for dcgm counters: prometheus-client would rename a counter's
    # TYPE line to NAME_total, which DCGM names do not carry. PromQL treats both alike.
    kind: str
    help: str
    value: Callable[[api.DeviceTelemetry], float | None]  # None: no reading, no sample
    native: str  # the same reading in native names, for users translating queries
    unit: str


def throttle_bitmask(reasons: list[str]) -> float:
    mask = 0
    for reason in reasons:
        mask |= THROTTLE_BITS.get(reason, 0)
    return float(mask)


FIELDS: tuple[DcgmField, ...] = (
    DcgmField(
        "DCGM_FI_DEV_GPU_UTIL",
        "gauge",
        "GPU utilization (in %).",
        lambda d: d.utilization_ratio * 100.0,
        native="`openxpu_utilization_ratio * 100`",
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
        lambda d: d.memory_used_bytes / MIB,
        native="`openxpu_memory_used_bytes / 2^20`",
        unit="MiB",
    ),
    DcgmField(
        "DCGM_FI_DEV_FB_FREE",
        "gauge",
        "Framebuffer memory free (in MiB).",
        lambda d: d.memory_free_bytes / MIB,
        native="`openxpu_memory_free_bytes / 2^20`",
        unit="MiB",
    ),
    DcgmField(
        "DCGM_FI_DEV_FB_TOTAL",
        "gauge",
        "Framebuffer memory total (in MiB).",
        lambda d: d.memory_total_bytes / MIB,
        native="`openxpu_memory_total_bytes / 2^20`",
        unit="MiB",
    ),
    DcgmField(
        "DCGM_FI_DEV_GPU_TEMP",
        "gauge",
        "GPU temperature (in C).",
        lambda d: d.temperature_celsius,
        native="`openxpu_temperature_celsius`",
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
        "unknown",
        "Total energy consumption since boot (in mJ).",
        lambda d: d.energy_joules * 1000.0,
        native="`openxpu_energy_joules_total * 1000`",
        unit="mJ",
    ),
    DcgmField(
        "DCGM_FI_DEV_SM_CLOCK",
        "gauge",
        "SM clock frequency (in MHz).",
        lambda d: d.clock_mhz,
        native="`openxpu_clock_hertz / 1e6`",
        unit="MHz",
    ),
    DcgmField(
        "DCGM_FI_DEV_MEM_CLOCK",
        "gauge",
        "Memory clock frequency (in MHz).",
        lambda d: float(d.memory_clock_mhz),
        native="`openxpu_memory_clock_hertz / 1e6`",
        unit="MHz",
    ),
    DcgmField(
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
        "gauge",
        "Current clock throttle reasons (bitmask of NVML clocks-event reasons).",
        lambda d: throttle_bitmask(d.throttle_reasons),
        native=THROTTLE_AS_BITS,
        unit="bitmask",
    ),
    DcgmField(
        "DCGM_FI_DEV_XID_ERRORS",
        "gauge",
        "Value of the last XID error encountered.",
        lambda d: float(d.last_error_code),
        native="`openxpu_last_error_code`",
        unit="code",
    ),
    DcgmField(
        "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        "unknown",
        "Total number of single-bit volatile ECC errors.",
        lambda d: float(d.ecc_corrected_total),
        native="`openxpu_ecc_corrected_errors_total`",
        unit="count",
    ),
    DcgmField(
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "unknown",
        "Total number of double-bit volatile ECC errors.",
        lambda d: float(d.ecc_uncorrected_total),
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
        "device": f"xpu{device.index}",
        "modelName": model,
        "Hostname": hostname,
        "DCGM_FI_DRIVER_VERSION": driver_version,
    }


def markdown_table() -> str:
    """The DCGM names and their native equivalents, as docs/exporter.md shows them."""
    rows = ["| DCGM name | native equivalent | unit |", "| --- | --- | --- |"]
    rows += [f"| `{f.name}` | {f.native} | {f.unit} |" for f in FIELDS]
    return "\n".join(rows) + "\n"
