"""The custom Collector: renders the latest snapshot as openxpu_* (and DCGM_FI_*) metrics.

It never talks to xpud itself: the app reads a snapshot (per scrape, or in the background)
into `ExporterState`, and `collect()` only turns it into samples, so a scrape of a cached
snapshot costs rendering alone. Label dicts are built once per device and holder and reused
until the devices or their pods change: building them dominated the profile otherwise.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from openxpu_exporter import compat
from openxpu_exporter.attribution import PodRef
from openxpu_exporter.config import Config
from openxpu_exporter.exposition import TextEncoder, render_labels
from openxpu_exporter.snapshot import ExporterState
from openxpu_runtime import api
from openxpu_runtime.faults import CATALOG, Health

Labels = dict[str, str]
HEALTH_STATES = tuple(h.value for h in Health)
# Every reason xpud reports, emitted as 0/1 so a panel or alert sees 0 before the first event.
THROTTLE_REASONS = ("idle", "hw_thermal_slowdown", "hw_thermal_shutdown")
MHZ = 1e6


class Gauge(NamedTuple):
    name: str
    kind: str  # "gauge" or "counter" (family name without _total)
    help: str
    value: Callable[[api.DeviceTelemetry], float | None]  # None: no reading, no sample


NATIVE: tuple[Gauge, ...] = (
    Gauge(
        "openxpu_utilization_ratio",
        "gauge",
        "Fraction of time the compute engines were busy over the last window (0-1).",
        lambda d: d.utilization_ratio,
    ),
    Gauge(
        "openxpu_matrix_utilization_ratio",
        "gauge",
        "Fraction of time the matrix (tensor) engines were busy (0-1).",
        lambda d: d.matrix_utilization_ratio,
    ),
    Gauge(
        "openxpu_memory_used_bytes",
        "gauge",
        "Device memory allocated.",
        lambda d: float(d.memory_used_bytes),
    ),
    Gauge(
        "openxpu_memory_free_bytes",
        "gauge",
        "Device memory free.",
        lambda d: float(d.memory_free_bytes),
    ),
    Gauge(
        "openxpu_memory_total_bytes",
        "gauge",
        "Device memory size.",
        lambda d: float(d.memory_total_bytes),
    ),
    Gauge(
        "openxpu_temperature_celsius", "gauge", "Die temperature.", lambda d: d.temperature_celsius
    ),
    Gauge("openxpu_power_watts", "gauge", "Power draw.", lambda d: d.power_watts),
    Gauge(
        "openxpu_power_limit_watts", "gauge", "Power limit (TDP).", lambda d: d.power_limit_watts
    ),
    Gauge(
        "openxpu_energy_joules",
        "counter",
        "Energy consumed since the device was set up.",
        lambda d: d.energy_joules,
    ),
    Gauge("openxpu_clock_hertz", "gauge", "Current compute clock.", lambda d: d.clock_mhz * MHZ),
    Gauge(
        "openxpu_clock_max_hertz",
        "gauge",
        "Maximum compute clock.",
        lambda d: d.max_clock_mhz * MHZ,
    ),
    Gauge(
        "openxpu_memory_clock_hertz",
        "gauge",
        "Current memory clock.",
        lambda d: d.memory_clock_mhz * MHZ,
    ),
    Gauge(
        "openxpu_ecc_corrected_errors",
        "counter",
        "Single-bit ECC errors corrected.",
        lambda d: float(d.ecc_corrected_total),
    ),
    Gauge(
        "openxpu_ecc_uncorrected_errors",
        "counter",
        "Uncorrectable ECC errors.",
        lambda d: float(d.ecc_uncorrected_total),
    ),
    Gauge(
        "openxpu_last_error_code",
        "gauge",
        "Code of the last error (the XID analogue); 0 if none since setup.",
        lambda d: float(d.last_error_code),
    ),
)

# Families with a label of their own, named here so the metric set can switch them off.
LABELLED = (
    "openxpu_health_state",
    "openxpu_clock_throttle_active",
    "openxpu_errors",
    "openxpu_fault_active",
    "openxpu_process_memory_used_bytes",
    "openxpu_device_info",
    "openxpu_driver_info",
)


def native_names() -> list[str]:
    return [g.name + ("_total" if g.kind == "counter" else "") for g in NATIVE] + [
        n + ("_total" if n == "openxpu_errors" else "") for n in LABELLED
    ]


class UnknownMetricError(ValueError):
    """A metric name the exporter does not emit (a typo would otherwise disable nothing)."""


def check_metric_names(names: Iterable[str]) -> None:
    """Raise UnknownMetricError naming every name that is not a native or DCGM metric."""
    # Counters may be named with or without _total, as the collector accepts both.
    known = set(native_names()) | {g.name for g in NATIVE} | set(LABELLED)
    known |= {f.name for f in compat.FIELDS}
    unknown = sorted(set(names) - known)
    if unknown:
        hints = [
            f"{name} (did you mean {close[0]}?)" if close else name
            for name in unknown
            for close in [difflib.get_close_matches(name, known, n=1)]
        ]
        raise UnknownMetricError(
            f"disabled_metrics: unknown metric name(s): {', '.join(hints)}; "
            "the names are listed in docs/exporter.md"
        )


def pod_labels(ref: PodRef) -> Labels:
    return {"pod": ref.pod, "namespace": ref.namespace, "container": ref.container}


@dataclass
class DeviceLabels:
    """Per device: one label set per holder (one without pod labels if nobody holds it)."""

    native: list[Labels]
    dcgm: list[Labels]
    health: dict[str, list[Labels]]  # state -> one label set per holder
    throttle: dict[str, list[Labels]]  # reason -> one label set per holder
    # last XID -> the dcgm label sets with err_code/err_msg; held so that their ids, which
    # render_text's cache is keyed by, stay theirs.
    xid: dict[int, list[Labels]] = field(default_factory=dict)

    def with_xid(self, code: int) -> list[Labels]:
        lbls = self.xid.get(code)
        if lbls is None:
            extra = compat.xid_labels(code)
            lbls = self.xid[code] = [lbl | extra for lbl in self.dcgm]
        return lbls


class Dense(NamedTuple):
    """A family with a value per device, shared by its holders' label sets: the bulk of a
    scrape. collect() expands it into Samples; the text encoder renders it without them."""

    name: str
    help: str
    kind: str
    sample: str  # also the name on the TYPE line: NAME_total, or a DCGM counter's own name
    groups: list[tuple[list[Labels], int | float]]

    def metric(self) -> Metric:
        # OpenMetrics requires a counter's samples to end in _total, which DCGM names lack:
        # for prometheus-client's encoders (the OpenMetrics fallback) such a counter is
        # "unknown". PromQL treats the two alike.
        kind = "unknown" if self.kind == "counter" and self.sample == self.name else self.kind
        m = Metric(self.name, self.help, kind)
        sample = self.sample
        m.samples = [Sample(sample, lbl, value) for lbls, value in self.groups for lbl in lbls]
        return m


class XpuCollector(Collector):
    def __init__(self, config: Config, state: ExporterState) -> None:
        self.config = config
        self.state = state
        disabled = config.disabled_metrics
        self._native = (
            [g for g in NATIVE if g.name not in disabled and g.name + "_total" not in disabled]
            if config.native
            else []
        )
        self._dcgm = (
            [f for f in compat.FIELDS if f.name not in disabled] if (config.dcgm_compat) else []
        )
        self._labelled = {
            n
            for n in LABELLED
            if config.native and n not in disabled and n + "_total" not in disabled
        }
        self._cache_key: object = None
        self._labels: dict[str, DeviceLabels] = {}
        # (sample name, id(label sets)) -> 'name{labels} ' of each, for the lists of label
        # sets in self._labels (held there, so the ids stay theirs until it is rebuilt).
        self._prefixes: dict[tuple[str, int], list[str]] = {}

    def describe(self) -> Iterator[Metric]:
        # Registering must not trigger a scrape of xpud: describe nothing dynamic.
        return iter(())

    def _labels_for(
        self, telemetry: api.Telemetry, models: dict[str, str]
    ) -> dict[str, DeviceLabels]:
        key = (
            tuple(d.uuid for d in telemetry.devices),
            id(models),
            telemetry.driver_version,
            self.state.attribution_version,
        )
        if key == self._cache_key:
            return self._labels
        host = self.config.hostname
        attribution = self.state.attribution
        labels: dict[str, DeviceLabels] = {}
        for d in telemetry.devices:
            model = models.get(d.uuid, "")
            holders = attribution.get(d.uuid) or attribution.get(str(d.index)) or ()
            base = {"xpu": str(d.index), "uuid": d.uuid, "model": model, "hostname": host}
            dcgm_base = compat.device_labels(d, model, host, telemetry.driver_version)
            if holders:
                native = [base | pod_labels(h) for h in holders]
                dcgm = [dcgm_base | pod_labels(h) for h in holders]
            else:
                native, dcgm = [base], [dcgm_base]
            labels[d.uuid] = DeviceLabels(
                native=native,
                dcgm=dcgm,
                health={s: [n | {"state": s} for n in native] for s in HEALTH_STATES},
                throttle={r: [n | {"reason": r} for n in native] for r in THROTTLE_REASONS},
            )
        self._cache_key, self._labels = key, labels
        self._prefixes.clear()
        return labels

    def collect(self) -> Iterator[Metric]:
        for family in self._families():
            yield family.metric() if isinstance(family, Dense) else family

    def render_text(self, out: TextEncoder) -> None:
        """What collect() yields, in the 0.0.4 text format, without a Sample per series: each
        series' `name{labels} ` is rendered once per label set (checked in test_exposition)."""
        prefixes = self._prefixes
        for family in self._families():
            if not isinstance(family, Dense):
                out.family(family)
                continue
            out.header(family.sample, family.kind, family.help)
            sample = family.sample
            lines = out.lines
            for lbls, value in family.groups:
                text = out.value(value)
                group = prefixes.get((sample, id(lbls)))
                if group is None:
                    group = prefixes[sample, id(lbls)] = [
                        f"{sample}{render_labels(lbl)} " for lbl in lbls
                    ]
                for prefix in group:
                    lines.append(f"{prefix}{text}\n")

    def _families(self) -> Iterator[Metric | Dense]:
        yield from self._self_metrics()
        snapshot = self.state.snapshot
        if snapshot is None:
            return
        telemetry = snapshot.telemetry
        devices = telemetry.devices
        labels = self._labels_for(telemetry, snapshot.models)

        for g in self._native:
            sample_name = g.name + "_total" if g.kind == "counter" else g.name
            groups = [(labels[d.uuid].native, v) for d in devices if (v := g.value(d)) is not None]
            yield Dense(g.name, g.help, g.kind, sample_name, groups)

        yield from self._labelled_metrics(telemetry, labels)

        for f in self._dcgm:
            xid = f.name == "DCGM_FI_DEV_XID_ERRORS"
            groups = [
                (labels[d.uuid].with_xid(d.last_error_code) if xid else labels[d.uuid].dcgm, v)
                for d in devices
                if (v := f.value(d)) is not None
            ]
            yield Dense(f.name, f.help, f.kind, f.name, groups)

    def _labelled_metrics(
        self, telemetry: api.Telemetry, labels: dict[str, DeviceLabels]
    ) -> Iterator[Metric | Dense]:
        on = self._labelled
        devices = telemetry.devices
        if "openxpu_health_state" in on:
            name = "openxpu_health_state"
            groups = [
                (lbls, 1.0 if d.health == state else 0.0)
                for d in devices
                for state, lbls in labels[d.uuid].health.items()
            ]
            yield Dense(name, "Device health: 1 for the current state.", "gauge", name, groups)
        if "openxpu_clock_throttle_active" in on:
            name = "openxpu_clock_throttle_active"
            groups = [
                (lbls, 1.0 if reason in d.throttle_reasons else 0.0)
                for d in devices
                for reason, lbls in labels[d.uuid].throttle.items()
            ]
            yield Dense(
                name, "1 while the clock is held down for this reason.", "gauge", name, groups
            )
        if "openxpu_errors" in on:
            m = Metric("openxpu_errors", "Errors (XID analogue) by code since setup.", "counter")
            for d in devices:
                for code, count in d.errors_total.items():
                    kind = CATALOG.get(int(code))
                    extra = {"code": code, "name": kind.name if kind else "UNKNOWN"}
                    for lbl in labels[d.uuid].native:
                        m.samples.append(Sample("openxpu_errors_total", lbl | extra, float(count)))
            yield m
        if "openxpu_fault_active" in on:
            m = Metric("openxpu_fault_active", "1 per fault the device currently has.", "gauge")
            for d in devices:
                for fault in d.active_faults:
                    extra = {
                        "code": str(fault.code),
                        "name": fault.name,
                        "severity": fault.severity,
                    }
                    for lbl in labels[d.uuid].native:
                        m.samples.append(Sample(m.name, lbl | extra, 1.0))
            yield m
        if "openxpu_process_memory_used_bytes" in on:
            m = Metric(
                "openxpu_process_memory_used_bytes",
                "Device memory held by the processes of each name.",
                "gauge",
            )
            for d in devices:
                # By name, not pid or context: those are new with every process, and each
                # would be a series of its own for as long as Prometheus keeps data.
                by_name: dict[str, float] = {}
                for p in d.processes:
                    by_name[p.name] = by_name.get(p.name, 0.0) + p.memory_used_bytes
                base = labels[d.uuid].native[0]
                device_only = {k: base[k] for k in ("xpu", "uuid", "model", "hostname")}
                for name, used in by_name.items():
                    m.samples.append(Sample(m.name, device_only | {"process": name}, used))
            yield m
        if "openxpu_device_info" in on:
            name = "openxpu_device_info"
            groups = [(labels[d.uuid].native, 1.0) for d in devices]
            yield Dense(name, "One series per device (and holder), value 1.", "gauge", name, groups)
        if "openxpu_driver_info" in on:
            m = Metric("openxpu_driver_info", "The XPU driver of this node, value 1.", "gauge")
            m.samples.append(
                Sample(
                    m.name,
                    {"hostname": self.config.hostname, "driver_version": telemetry.driver_version},
                    1.0,
                )
            )
            yield m

    def _self_metrics(self) -> Iterator[Metric]:
        s = self.state
        host = {"hostname": self.config.hostname}
        m = Metric("openxpu_exporter_xpud_up", "1 if the last read of xpud succeeded.", "gauge")
        m.samples.append(Sample(m.name, host, 1.0 if s.xpud_up else 0.0))
        yield m
        if s.podresources_up is not None:
            m = Metric(
                "openxpu_exporter_podresources_up",
                "1 if the kubelet PodResources API answered the last List; "
                "0 means device metrics carry no pod labels.",
                "gauge",
            )
            m.samples.append(Sample(m.name, host, 1.0 if s.podresources_up else 0.0))
            yield m
            m = Metric(
                "openxpu_exporter_attributed_devices", "Devices held by at least one pod.", "gauge"
            )
            m.samples.append(Sample(m.name, host, float(len(s.attribution))))
            yield m
        m = Metric("openxpu_exporter_read_errors", "Failed reads by source.", "counter")
        for source, count in s.errors.items():
            m.samples.append(
                Sample(
                    "openxpu_exporter_read_errors_total", host | {"source": source}, float(count)
                )
            )
        yield m
        if s.snapshot is not None:
            m = Metric(
                "openxpu_exporter_snapshot_read_seconds",
                "How long reading the current snapshot from xpud took.",
                "gauge",
            )
            m.samples.append(Sample(m.name, host, s.snapshot.read_seconds))
            yield m
            m = Metric(
                "openxpu_exporter_snapshot_age_seconds",
                "Age of the snapshot this scrape renders.",
                "gauge",
            )
            m.samples.append(Sample(m.name, host, max(0.0, time.time() - s.snapshot.read_at)))
            yield m
