"""Prometheus alert rules for XPUs, as data: rendered into a PrometheusRule by `render.py`.

Device labels are aggregated away from pod labels (`max by (hostname, xpu, uuid)`) so a
shared device raises one alert, not one per pod sharing it.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

GROUP = "openxpu.rules"
DEVICE = "hostname, xpu, uuid"
# The exporter Service (and so Prometheus' job) carries this name in the chart.
EXPORTER_JOB = ".*openxpu-exporter.*"


def new_errors(window: str, selector: str = "") -> str:
    """Errors per device and code within `window`, for the alert and the dashboard.

    A code's first error creates its series at 1, which increase() cannot see (it needs two
    samples), so a series that did not exist `window` ago counts in full. Both halves are
    aggregated to the device before comparing: a pod starting or leaving renames the
    device's series (its pod labels), and that must not look like new errors. `max`, not
    `sum`: every pod sharing a device carries the device's whole count.
    """
    by = f"max by ({DEVICE}, code, name)"
    series = f"openxpu_errors_total{{{selector}}}" if selector else "openxpu_errors_total"
    return (
        f"({by} (increase({series}[{window}])) > 0) or "
        f"({by} ({series}) unless {by} ({series} offset {window}))"
    )


class Rule(TypedDict):
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    keep_firing_for: NotRequired[str]


RULES: tuple[Rule, ...] = (
    {
        "alert": "OpenXPUDeviceUnhealthy",
        "expr": f'max by ({DEVICE}, state) (openxpu_health_state{{state=~"Unhealthy|Lost"}}) == 1',
        "for_": "1m",
        "severity": "critical",
        "summary": "XPU {{ $labels.xpu }} on {{ $labels.hostname }} is {{ $labels.state }}",
        "description": "The device takes no new work (the device plugin reports it Unhealthy). "
        "Check `xpu-smi -q -i {{ $labels.xpu }}` on the node for the fault.",
    },
    {
        "alert": "OpenXPUDeviceDegraded",
        "expr": f'max by ({DEVICE}) (openxpu_health_state{{state="Degraded"}}) == 1',
        "for_": "10m",
        "severity": "warning",
        "summary": "XPU {{ $labels.xpu }} on {{ $labels.hostname }} has been degraded for 10m",
        "description": "A recoverable fault (engine reset, link error) keeps recurring.",
    },
    {
        "alert": "OpenXPUErrorsRising",
        "expr": new_errors("10m"),
        "for_": "0m",
        "severity": "warning",
        "summary": "XPU {{ $labels.xpu }} on {{ $labels.hostname }} reports error "
        "{{ $labels.code }} ({{ $labels.name }})",
        "description": "{{ $value }} new error(s) with code {{ $labels.code }} in 10 minutes.",
    },
    {
        "alert": "OpenXPUUncorrectableECCErrors",
        "expr": f"sum by ({DEVICE}) (increase(openxpu_ecc_uncorrected_errors_total[1h])) > 0",
        "for_": "0m",
        "severity": "critical",
        "summary": "Uncorrectable ECC errors on XPU {{ $labels.xpu }} of {{ $labels.hostname }}",
        "description": "Memory on this device returned corrupt data; workloads on it may have "
        "computed wrong results. Drain the node and reset the device.",
    },
    {
        "alert": "OpenXPUThermalThrottling",
        "expr": f"max by ({DEVICE}) "
        '(openxpu_clock_throttle_active{reason=~"hw_thermal_slowdown|hw_thermal_shutdown"}) == 1',
        "for_": "5m",
        "severity": "warning",
        "summary": "XPU {{ $labels.xpu }} on {{ $labels.hostname }} is thermally throttled",
        "description": "The clock is held down by temperature; check cooling and power.",
    },
    {
        "alert": "OpenXPUMemoryNearlyFull",
        "expr": f"max by ({DEVICE}) (openxpu_memory_used_bytes / openxpu_memory_total_bytes) "
        "> 0.95",
        "for_": "10m",
        "severity": "warning",
        "summary": "XPU {{ $labels.xpu }} on {{ $labels.hostname }} memory is "
        "{{ $value | humanizePercentage }} full",
        "description": "Allocations beyond free memory fail with out-of-memory.",
    },
    {
        "alert": "OpenXPUExporterDown",
        "expr": f'up{{job=~"{EXPORTER_JOB}"}} == 0',
        "for_": "5m",
        "severity": "warning",
        "summary": "openxpu-exporter on {{ $labels.instance }} is down",
        "description": "No XPU metrics from this node: dashboards and the other XPU alerts "
        "are blind to it.",
    },
    {
        "alert": "OpenXPUDriverUnreachable",
        "expr": "max by (hostname, instance) (openxpu_exporter_xpud_up) == 0",
        "for_": "5m",
        "severity": "critical",
        "summary": "xpud on {{ $labels.hostname }} does not answer the exporter",
        "description": "The XPU driver daemon is down or its socket is not mounted; pods on "
        "this node cannot use their XPUs.",
    },
    {
        "alert": "OpenXPUPodAttributionDown",
        "expr": "max by (hostname, instance) (openxpu_exporter_podresources_up) == 0",
        "for_": "15m",
        "severity": "info",
        "summary": "XPU metrics on {{ $labels.hostname }} carry no pod labels",
        "description": "The kubelet PodResources socket is missing or does not answer.",
    },
)


def rule_groups(for_override: str | None = None) -> dict[str, Any]:
    """The rules in Prometheus' rule-file shape; `for_override` is for tests only."""
    rules = []
    for r in RULES:
        rule: dict[str, Any] = {
            "alert": r["alert"],
            "expr": r["expr"],
            "for": for_override or r["for_"],
            "labels": {"severity": r["severity"]},
            "annotations": {
                "summary": r["summary"],
                "description": r["description"],
            },
        }
        rules.append(rule)
    return {"groups": [{"name": GROUP, "rules": rules}]}
