"""The Grafana dashboard, built as code: cluster, node, device, pod and exporter rows.

`render.py` writes it to assets/ (raw JSON) and deploy/ (a ConfigMap for the Grafana sidecar);
tests run every panel's query against a real Prometheus. Shared devices carry one series per
holder, so device-level panels take `max by (hostname, uuid)` first to count each device once.
"""

from __future__ import annotations

from typing import Any, TypedDict

from openxpu_exporter import alerts

UID = "openxpu-overview"
TITLE = "OpenXPU"
DS = {"type": "prometheus", "uid": "${datasource}"}
# Every device selector honours the node and device variables.
DEV = 'hostname=~"$hostname", xpu=~"$xpu"'
POD = 'hostname=~"$hostname", namespace=~"$namespace", pod=~"$pod", pod!=""'


class Target(TypedDict):
    expr: str
    legend: str
    instant: bool


def per_device(metric: str, selector: str = DEV) -> str:
    return f"max by (hostname, xpu) ({metric}{{{selector}}})"


def one_per_device(metric: str) -> str:
    return f'max by (hostname, uuid) ({metric}{{hostname=~"$hostname"}})'


class Builder:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self._y = 0
        self._x = 0
        self._row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "id": len(self.panels) + 1,
                "panels": [],
            }
        )
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_h
        self._x, self._row_h = 0, 0

    def panel(
        self,
        kind: str,
        title: str,
        targets: list[Target],
        *,
        unit: str = "short",
        w: int = 8,
        h: int = 8,
        description: str = "",
        **extra: Any,
    ) -> None:
        if self._x + w > 24:
            self._newline()
        panel: dict[str, Any] = {
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "id": len(self.panels) + 1,
            "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
            "targets": [
                {
                    "datasource": DS,
                    "expr": t["expr"],
                    "legendFormat": t["legend"],
                    "instant": t["instant"],
                    "range": not t["instant"],
                    "refId": chr(ord("A") + i),
                }
                for i, t in enumerate(targets)
            ],
        }
        panel.update(extra)
        self.panels.append(panel)
        self._x += w
        self._row_h = max(self._row_h, h)


def q(expr: str, legend: str = "", instant: bool = False) -> Target:
    return {"expr": expr, "legend": legend, "instant": instant}


def stat(b: Builder, title: str, expr: str, unit: str = "short", **extra: Any) -> None:
    b.panel("stat", title, [q(expr, instant=True)], unit=unit, w=4, h=4, **extra)


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        # ".*" (not the joined values) so devices without a pod still match the All choice.
        "allValue": ".*",
        "current": {"selected": True, "text": "All", "value": "$__all"},
        "sort": 1,
    }


def build() -> dict[str, Any]:
    b = Builder()
    util_legend = "{{hostname}} xpu{{xpu}}"

    b.row("Cluster overview")
    stat(b, "XPUs", 'count(count by (hostname, uuid) (openxpu_device_info{hostname=~"$hostname"}))')
    stat(
        b,
        "Unhealthy XPUs",
        "sum(max by (hostname, uuid) "
        '(openxpu_health_state{hostname=~"$hostname", state=~"Unhealthy|Lost"}))',
        thresholds_red=1,
    )
    stat(
        b,
        "Allocated XPUs",
        'count(count by (hostname, uuid) (openxpu_device_info{hostname=~"$hostname", pod!=""}))'
        " or vector(0)",
    )
    stat(
        b,
        "Average utilization",
        f"avg({one_per_device('openxpu_utilization_ratio')})",
        unit="percentunit",
    )
    stat(
        b,
        "Memory used",
        f"sum({one_per_device('openxpu_memory_used_bytes')}) / "
        f"sum({one_per_device('openxpu_memory_total_bytes')})",
        unit="percentunit",
    )
    stat(b, "Power", f"sum({one_per_device('openxpu_power_watts')})", unit="watt")

    b.row("Nodes")
    b.panel(
        "timeseries",
        "Utilization by node",
        [q(f"avg by (hostname) ({one_per_device('openxpu_utilization_ratio')})", "{{hostname}}")],
        unit="percentunit",
    )
    b.panel(
        "timeseries",
        "Memory used by node",
        [q(f"sum by (hostname) ({one_per_device('openxpu_memory_used_bytes')})", "{{hostname}}")],
        unit="bytes",
    )
    b.panel(
        "timeseries",
        "Power by node",
        [q(f"sum by (hostname) ({one_per_device('openxpu_power_watts')})", "{{hostname}}")],
        unit="watt",
    )

    b.row("Devices")
    b.panel(
        "timeseries",
        "Utilization",
        [q(per_device("openxpu_utilization_ratio"), util_legend)],
        unit="percentunit",
    )
    b.panel(
        "timeseries",
        "Matrix engine utilization",
        [q(per_device("openxpu_matrix_utilization_ratio"), util_legend)],
        unit="percentunit",
    )
    b.panel(
        "timeseries",
        "Memory used",
        [q(per_device("openxpu_memory_used_bytes"), util_legend)],
        unit="bytes",
    )
    b.panel(
        "timeseries",
        "Temperature",
        [q(per_device("openxpu_temperature_celsius"), util_legend)],
        unit="celsius",
    )
    b.panel(
        "timeseries",
        "Power",
        [
            q(per_device("openxpu_power_watts"), util_legend),
            q(per_device("openxpu_power_limit_watts"), "limit {{hostname}} xpu{{xpu}}"),
        ],
        unit="watt",
    )
    b.panel(
        "timeseries",
        "Compute clock",
        [q(per_device("openxpu_clock_hertz"), util_legend)],
        unit="hertz",
    )
    b.panel(
        "timeseries",
        "Clock throttling",
        [
            q(
                f"max by (hostname, xpu, reason) (openxpu_clock_throttle_active{{{DEV}, "
                f'reason!="idle"}})',
                "{{hostname}} xpu{{xpu}} {{reason}}",
            )
        ],
        description="1 while the clock is held down (thermal slowdown or shutdown).",
    )
    b.panel(
        "timeseries",
        "Errors (per code, in the interval)",
        [
            q(
                alerts.new_errors("$__rate_interval", DEV),
                "{{hostname}} xpu{{xpu}} {{code}} {{name}}",
            )
        ],
        description="XID-like error codes reported by xpud.",
    )
    b.panel(
        "timeseries",
        "ECC errors (total)",
        [
            q(
                per_device("openxpu_ecc_corrected_errors_total"),
                "corrected {{hostname}} xpu{{xpu}}",
            ),
            q(
                per_device("openxpu_ecc_uncorrected_errors_total"),
                "uncorrected {{hostname}} xpu{{xpu}}",
            ),
        ],
    )
    b.panel(
        "table",
        "Health",
        [
            q(
                f"max by (hostname, xpu, uuid, state) (openxpu_health_state{{{DEV}}} == 1)",
                instant=True,
            )
        ],
        w=12,
        description="Current health of each device: Healthy, Degraded, Unhealthy or Lost.",
    )
    b.panel(
        "table",
        "Active faults",
        [
            q(
                f"max by (hostname, xpu, code, name, severity) (openxpu_fault_active{{{DEV}}})",
                instant=True,
            )
        ],
        w=12,
    )

    b.row("Pods")
    b.panel(
        "timeseries",
        "Utilization by pod",
        [
            q(
                f"max by (namespace, pod) (openxpu_utilization_ratio{{{POD}}})",
                "{{namespace}}/{{pod}}",
            )
        ],
        unit="percentunit",
    )
    b.panel(
        "timeseries",
        "Device memory by pod",
        [
            q(
                f"sum by (namespace, pod) (openxpu_memory_used_bytes{{{POD}}})",
                "{{namespace}}/{{pod}}",
            )
        ],
        unit="bytes",
        description="Memory of the devices a pod holds; a shared device counts for each "
        "pod sharing it.",
    )
    b.panel(
        "timeseries",
        "Power by pod",
        [q(f"sum by (namespace, pod) (openxpu_power_watts{{{POD}}})", "{{namespace}}/{{pod}}")],
        unit="watt",
    )
    b.panel(
        "table",
        "XPUs by pod",
        [
            q(
                f"count by (namespace, pod, container, hostname) (openxpu_device_info{{{POD}}})",
                instant=True,
            )
        ],
        w=24,
    )

    b.row("Exporter")
    b.panel(
        "timeseries",
        "Scrape duration (p99)",
        [
            q(
                "histogram_quantile(0.99, sum by (le, instance) "
                "(rate(openxpu_exporter_scrape_duration_seconds_bucket[$__rate_interval])))",
                "{{instance}}",
            )
        ],
        unit="s",
    )
    b.panel(
        "timeseries",
        "Sources up",
        [
            q(
                'min by (hostname) (openxpu_exporter_xpud_up{hostname=~"$hostname"})',
                "xpud {{hostname}}",
            ),
            q(
                'min by (hostname) (openxpu_exporter_podresources_up{hostname=~"$hostname"})',
                "kubelet {{hostname}}",
            ),
        ],
    )
    b.panel(
        "timeseries",
        "Exporter memory",
        [q('process_resident_memory_bytes{job=~"$job"}', "{{instance}}")],
        unit="bytes",
    )

    for panel in b.panels:
        red = panel.pop("thresholds_red", None)
        if red is not None:
            panel["fieldConfig"]["defaults"]["thresholds"] = {
                "mode": "absolute",
                "steps": [{"color": "green", "value": None}, {"color": "red", "value": red}],
            }

    return {
        "uid": UID,
        "title": TITLE,
        "description": "XPU utilization, memory, power, temperature, errors and health by "
        "cluster, node, device and pod (openxpu-exporter).",
        "tags": ["openxpu", "xpu"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "graphTooltip": 1,
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                {
                    **variable(
                        "job", "Exporter job", "label_values(openxpu_exporter_xpud_up, job)"
                    ),
                    "hide": 2,
                },
                variable("hostname", "Node", "label_values(openxpu_device_info, hostname)"),
                variable(
                    "xpu", "XPU", 'label_values(openxpu_device_info{hostname=~"$hostname"}, xpu)'
                ),
                variable(
                    "namespace",
                    "Namespace",
                    'label_values(openxpu_device_info{hostname=~"$hostname"}, namespace)',
                ),
                variable(
                    "pod",
                    "Pod",
                    'label_values(openxpu_device_info{namespace=~"$namespace"}, pod)',
                ),
            ]
        },
        "annotations": {"list": []},
        "panels": b.panels,
    }


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
