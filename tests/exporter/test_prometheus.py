"""A real Prometheus scrapes the exporter: every dashboard query and every alert gets data."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openxpu_exporter import alerts, dashboard
from openxpu_exporter.exposition import TEXT_CONTENT_TYPE
from openxpu_runtime import api
from openxpu_runtime.testing import XpudProcess

from .prometheus import PROMETHEUS_ACCEPT, Prometheus
from .support import FakeKubelet, free_port, pod, recording_proxy, running_exporter

pytestmark = pytest.mark.integration

# Grafana would put the selected values here; "All" is ".*" in this dashboard.
RATE_INTERVAL_S = 15
VARIABLES = {
    "$hostname": ".*",
    "$xpu": ".*",
    "$namespace": ".*",
    "$pod": ".*",
    "$job": ".*",
    "$__rate_interval": f"{RATE_INTERVAL_S}s",
}


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture
def stack(manual_xpud: XpudProcess, kubelet: FakeKubelet, short_root: Path) -> Iterator[Any]:
    """A live exporter (pods attributed, DCGM names on), one that cannot reach xpud or the
    kubelet, and a dead target, all in the exporter job of a real Prometheus."""
    with manual_xpud.client() as c:
        uuids = [d.uuid for d in c.telemetry().devices]
    kubelet.pods = [
        pod("train-0", "ml", {"trainer": [uuids[0], uuids[1]]}),
        pod("infer-a", "serving", {"server": [f"{uuids[2]}::0"]}, "openxpu.io/xpu.shared"),
        pod("infer-b", "serving", {"server": [f"{uuids[2]}::1"]}, "openxpu.io/xpu.shared"),
    ]
    live_args = (
        "--xpud-socket", str(manual_xpud.socket), "--kubelet-socket", str(kubelet.socket_path),
        "--dcgm-compat", "--hostname", "node-a", "--refresh-interval", "0.5",
        "--attribution-interval", "0.5",
    )  # fmt: skip
    broken_args = (
        "--xpud-socket", str(short_root / "none.sock"),
        "--kubelet-socket", str(short_root / "none-kubelet.sock"), "--hostname", "node-b",
    )  # fmt: skip
    with (
        running_exporter(*live_args, log=short_root / "live.log") as live,
        running_exporter(*broken_args, log=short_root / "broken.log", wait_ready=False) as broken,
    ):
        targets = [f"127.0.0.1:{live.port}", f"127.0.0.1:{broken.port}", f"127.0.0.1:{free_port()}"]
        prom = Prometheus(
            short_root / "prometheus",
            [{"job_name": "openxpu-exporter", "static_configs": [{"targets": targets}]}],
            # Shipped rules with `for` cut to 0s: the conditions are what this test reaches.
            alerts.rule_groups(for_override="0s"),
        ).start()
        try:
            yield prom, manual_xpud, kubelet, targets
        finally:
            prom.stop()


def test_dashboard_and_alerts_against_prometheus(stack: Any) -> None:
    prom, xpud, _, targets = stack
    live = targets[0]
    wait_for(
        "a few scrapes", lambda: prom.query(f'count_over_time(up{{instance="{live}"}}[1m]) >= 3')
    )

    with xpud.client() as c:
        # 96% memory on device 4, matrix load on device 5, then faults on devices 0..3.
        ctx = c.open_context(api.ContextRequest(pid=1, name="load", devices=["4", "5"]))
        c.launch(ctx.id, "5", 1e18, kind="matrix")
        c.allocate(ctx.id, "4", int(c.telemetry().devices[4].memory_total_bytes * 0.96))
        c.advance_clock(2)
        c.inject_fault(api.FaultRequest(device="0", code=48))  # ECC_DBE: Unhealthy
        c.inject_fault(api.FaultRequest(device="1", code=140))  # thermal trip: throttled
        c.inject_fault(api.FaultRequest(device="2", code=63))  # ECC_SBE: corrected
        c.inject_fault(api.FaultRequest(device="3", code=43))  # engine reset: Degraded
        c.advance_clock(10)
    faults_at = time.time()

    expected = {r["alert"] for r in alerts.RULES}
    wait_for(f"alerts {sorted(expected)} firing", lambda: expected <= prom.firing(), 90)
    firing = prom.api("alerts")["alerts"]

    def labels_of(name: str) -> list[dict[str, str]]:
        return [a["labels"] for a in firing if a["labels"]["alertname"] == name]

    # ECC_DBE and a thermal trip both take a device out of service.
    assert {a["xpu"] for a in labels_of("OpenXPUDeviceUnhealthy")} == {"0", "1"}
    assert {a["xpu"] for a in labels_of("OpenXPUThermalThrottling")} == {"1"}
    assert {a["xpu"] for a in labels_of("OpenXPUDeviceDegraded")} == {"3"}
    assert {a["xpu"] for a in labels_of("OpenXPUMemoryNearlyFull")} == {"4"}
    assert {(a["xpu"], a["code"]) for a in labels_of("OpenXPUErrorsRising")} >= {
        ("0", "48"), ("1", "140"), ("2", "63"), ("3", "43")
    }  # fmt: skip
    # A shared device raises one alert, not one per pod sharing it.
    assert len([a for a in labels_of("OpenXPUErrorsRising") if a["xpu"] == "2"]) == 1
    assert {a["hostname"] for a in labels_of("OpenXPUDriverUnreachable")} == {"node-b"}
    assert {a["hostname"] for a in labels_of("OpenXPUPodAttributionDown")} == {"node-b"}
    assert {a["instance"] for a in labels_of("OpenXPUExporterDown")} == {targets[2]}

    # Every query of every panel has data a few scrapes after the faults. Evaluated at that
    # instant, as "errors in the interval" shows a code's first error only inside the window.
    board = dashboard.build()
    at = faults_at + 8
    time.sleep(max(0.0, at + 2 - time.time()))  # let the instant pass, with a scrape after it
    empty = [
        (title, expr)
        for title, expr in dashboard.queries(board)
        if not prom.query(substitute(expr), at)
    ]
    assert not empty, f"panels without data: {empty}"
    # And every template variable offers values.
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", var["definition"])
        assert match, var["definition"]
        values = prom.api(f"label/{match[2]}/values", **{"match[]": substitute(match[1])})
        assert values, f"variable {var['name']} has no values"

    # Pod panels see the pods; shared device 2 shows both of its pods.
    pods = {r["metric"]["pod"] for r in prom.query('openxpu_device_info{pod!=""}')}
    assert pods == {"train-0", "infer-a", "infer-b"}

    # Queries written for NVIDIA GPUs work unchanged on the DCGM names.
    for expr in (
        "avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)",
        'sum by (namespace, pod) (DCGM_FI_DEV_FB_USED{pod!=""})',
        "max by (gpu) (DCGM_FI_DEV_GPU_TEMP) > 0",
        "rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION[15s]) >= 0",
        "DCGM_FI_DEV_XID_ERRORS > 0",
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE > 0",
    ):
        assert prom.query(expr), expr
    # Rules written for DCGM evaluate as on NVIDIA: an idle device's utilization is exactly
    # 0 (devices 6 and 7 have had no work), a given XID selects by its err_code label.
    idle = {r["metric"]["gpu"] for r in prom.query("DCGM_FI_DEV_GPU_UTIL == 0")}
    assert {"6", "7"} <= idle and "5" not in idle
    xid = prom.query('DCGM_FI_DEV_XID_ERRORS{err_code="48"}')
    assert [(r["metric"]["gpu"], r["metric"]["pci_bus_id"], r["value"][1]) for r in xid] == [
        ("0", "00000000:01:00.0", "48")
    ]
    # dcgm-exporter's types, as Prometheus read them from the TYPE lines.
    metadata = prom.api("metadata")
    assert metadata["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"][0]["type"] == "counter"
    assert metadata["DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"][0]["type"] == "counter"
    assert metadata["DCGM_FI_DEV_GPU_UTIL"][0]["type"] == "gauge"


def test_a_pod_leaving_a_device_is_no_new_error(stack: Any) -> None:
    """The device's series change their pod labels when its holder changes; the errors
    panel (and the alert, built the same way) must not count the old errors again."""
    prom, xpud, kubelet, _ = stack
    with xpud.client() as c:
        c.inject_fault(api.FaultRequest(device="0", code=48))
    device0 = 'openxpu_errors_total{xpu="0", code="48"'
    wait_for("the error held by train-0", lambda: prom.query(device0 + ', pod="train-0"}'))
    time.sleep(RATE_INTERVAL_S + 1)  # the error is now older than the panel's window
    errors_panel = next(
        expr for title, expr in dashboard.queries(dashboard.build()) if title.startswith("Errors")
    )
    assert not [r for r in prom.query(substitute(errors_panel)) if r["metric"]["xpu"] == "0"]

    kubelet.pods = [p for p in kubelet.pods if p.name != "train-0"]
    wait_for("the error series without a pod", lambda: prom.query(device0 + ', pod=""}'))
    # The renamed series is new, so a per-series comparison would count the error again ...
    assert prom.query(f"{device0}}} unless {device0}}} offset {RATE_INTERVAL_S}s")
    # ... while the device as a whole had it already.
    assert not [r for r in prom.query(substitute(errors_panel)) if r["metric"]["xpu"] == "0"]


def test_prometheus_gets_the_fast_text_format(
    manual_xpud: XpudProcess, kubelet: FakeKubelet, short_root: Path
) -> None:
    """What a real Prometheus asks for is what the benchmark sends, and it is answered by the
    exporter's own 0.0.4 encoder (the OpenMetrics one is prometheus-client's, several times
    slower), and Prometheus ingests it. (test_bench.py reads Prometheus's
    scrape_duration_seconds of a large node; through this proxy it would time the proxy.)"""
    with manual_xpud.client() as c:
        uuid = c.telemetry().devices[0].uuid
    kubelet.pods = [pod("train-0", "ml", {"trainer": [uuid]})]
    args = (
        "--xpud-socket", str(manual_xpud.socket), "--kubelet-socket", str(kubelet.socket_path),
        "--dcgm-compat",
    )  # fmt: skip
    with (
        running_exporter(*args, log=short_root / "exporter.log") as exporter,
        recording_proxy(exporter.url) as (port, exchanges),
    ):
        target = {"targets": [f"127.0.0.1:{port}"]}
        job = {"job_name": "openxpu-exporter", "static_configs": [target]}
        prom = Prometheus(short_root / "prometheus", [job], {"groups": []}).start()
        try:
            wait_for("three scrapes", lambda: prom.query("count_over_time(up[1m]) >= 3"))
            assert [r["value"][1] for r in prom.query("up")] == ["1"]
            pods = prom.query('openxpu_device_info{pod="train-0"}')
        finally:
            prom.stop()
    assert {e.accept for e in exchanges} == {PROMETHEUS_ACCEPT}
    assert {e.content_type for e in exchanges} == {TEXT_CONTENT_TYPE}
    assert len(pods) == 1
