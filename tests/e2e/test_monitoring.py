"""The Prometheus Operator and its Prometheus in the lab (`up --monitoring`) scrape the
OpenXPU stack through the exporter's ServiceMonitor and evaluate the chart's PrometheusRule.

The stack is deployed as test_openxpu_stack deploys it; the ServiceMonitor is the one the
operator renders for `spec.exporter.serviceMonitor.enabled`, the PrometheusRule the chart's
(`helm template` of templates/monitoring.yaml), both labelled as kube-prometheus-stack
selects by default. OpenXPUDeviceUnhealthy has `for: 1m`; the lab's Prometheus scrapes and
evaluates every 5s, so it fires about 65s after the fault.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from e2e.conftest import COLD_START_TIMEOUT, LabCluster
from e2e.test_openxpu_stack import DEMO, PROFILE_COUNT, stack  # noqa: F401  (the fixture)
from openxpu_exporter import dashboard
from openxpu_lab import gobuild, monitoring
from openxpu_lab.progress import Progress
from openxpu_operator.policy import load_policy
from openxpu_operator.render import OPERANDS, RenderContext, render_operand

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(COLD_START_TIMEOUT)]

CHART = Path(__file__).resolve().parents[2] / "helm" / "openxpu"
ALERT = "OpenXPUDeviceUnhealthy"
EXPORTER = "app.kubernetes.io/name=openxpu-exporter"
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], timeout: float = 180) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(1)


def exporter_service_monitor() -> dict[str, Any]:
    """The operator's ServiceMonitor for a policy with the exporter's serviceMonitor on."""
    policy = load_policy(
        {
            "metadata": {"name": "monitoring-e2e", "uid": "00000000-0000-0000-0000-000000000000"},
            "spec": {
                "exporter": {
                    "serviceMonitor": {
                        "enabled": True,
                        "interval": monitoring.SCRAPE_INTERVAL,
                        "additionalLabels": monitoring.SELECTOR_LABELS,
                        # The exporter's pod/namespace labels name the workload holding a
                        # device; without this they would become exported_pod/... and the
                        # target's (the exporter pod's) would take their place.
                        "honorLabels": True,
                    }
                }
            },
        }
    )
    (exporter,) = [o for o in OPERANDS if o.name == "exporter"]
    objects = render_operand(exporter, policy, RenderContext()).objects
    (smon,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    # Owned by a policy that does not exist here: the garbage collector would delete it.
    smon["metadata"].pop("ownerReferences", None)
    return smon


def chart_monitoring_objects() -> str:
    """The chart's PrometheusRule (and its operator ServiceMonitor) as `helm install` with
    exporter.serviceMonitor.enabled would create them."""
    tool = gobuild.helm_tool()
    gobuild.ensure(tool, Progress(quiet=True))
    label = ",".join(
        f"exporter.serviceMonitor.additionalLabels.{k}={v}"
        for k, v in monitoring.SELECTOR_LABELS.items()
    )
    return subprocess.run(
        [
            str(tool.bin_dir / "helm"),
            "template",
            "openxpu",
            str(CHART),
            "--namespace=openxpu",
            "--set=exporter.serviceMonitor.enabled=true",
            f"--set={label}",
            "--show-only=templates/monitoring.yaml",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


def exporter_pods(lab: LabCluster) -> dict[str, str]:
    """Running exporter pods: name -> IP."""
    items = lab.kubectl_json("-n", "openxpu", "get", "pod", "-l", EXPORTER)["items"]
    assert isinstance(items, list)
    return {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in items
        if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
    }


def up_targets() -> dict[str, str]:
    """exporter pod -> value of `up` for the targets found through the exporter's
    ServiceMonitor (it keeps the target's pod as exporter_pod: `pod` is the workload's)."""
    result = monitoring.query('up{job="openxpu-exporter"}')
    return {r["metric"]["exporter_pod"]: r["value"][1] for r in result}


def alerts(name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = monitoring.api("alerts")["alerts"]
    return [a for a in found if a["labels"]["alertname"] == name]


def driver_smi(lab: LabCluster, *args: str, check: bool = True) -> None:
    lab.kubectl("-n", "openxpu", "exec", "ds/openxpu-driver", "--", "xpu-smi", *args, check=check)


@pytest.fixture(scope="module")
def monitored(stack: LabCluster) -> Iterator[LabCluster]:  # noqa: F811
    lab = stack
    lab.lab.start_monitoring()
    manifests = yaml.safe_dump(exporter_service_monitor()) + "---\n" + chart_monitoring_objects()
    lab.kubectl("apply", "-f", "-", input_text=manifests)
    lab.kubectl("apply", "-f", str(DEMO / "workloads" / "burn.yaml"))
    lab.kubectl("rollout", "status", "deploy/xpu-burn", "--timeout=120s", timeout=140)
    try:
        yield lab
    finally:
        driver_smi(lab, "clear-fault", "-i", "0", check=False)
        lab.kubectl("delete", "-f", "-", "--ignore-not-found", input_text=manifests, check=False)
        lab.kubectl(
            "delete", "-f", str(DEMO / "workloads" / "burn.yaml"), "--ignore-not-found", check=False
        )
        monitoring.remove(lab.kubeconfig, Progress(quiet=True))


def test_every_exporter_pod_is_an_up_target(monitored: LabCluster) -> None:
    pods = exporter_pods(monitored)
    assert pods, "the stack runs exporter pods"
    try:
        targets = wait_for(
            f"an up == 1 target for each of {sorted(pods)}",
            lambda: (t := up_targets()) and set(t) == set(pods) and set(t.values()) == {"1"} and t,
            # The new config reaches the pod as a Secret volume: the kubelet's sync (~1 min).
            timeout=300,
        )
    except AssertionError as exc:
        config = monitoring.api("status/config")["yaml"]
        raise AssertionError(
            f"{exc}\nPrometheus config:\n{config}\n{monitoring.diagnose(monitored.kubeconfig, 30)}"
        ) from None
    assert set(targets) == set(pods)
    # The alert rules arrived through the PrometheusRule, with their $labels templates.
    groups = monitoring.api("rules")["groups"]
    assert ALERT in {r["name"] for g in groups for r in g["rules"]}


@pytest.mark.timeout(900)
def test_alert_fires_after_a_fault_and_resolves_after_clearing_it(monitored: LabCluster) -> None:
    lab = monitored
    wait_for("the exporter's first samples", lambda: up_targets())
    assert not [a for a in alerts(ALERT) if a["state"] == "firing"], "no fault yet"
    driver_smi(lab, "inject-fault", "-i", "0", "--code", "48")
    faulted_at = time.time()
    # for: 1m, evaluated every 5s, scraped every 5s: firing within about 70s.
    firing = wait_for(
        f"{ALERT} firing",
        lambda: [a for a in alerts(ALERT) if a["state"] == "firing"],
        timeout=180,
    )
    assert [(a["labels"]["xpu"], a["labels"]["state"]) for a in firing] == [("0", "Unhealthy")]
    assert firing[0]["annotations"]["summary"] == f"XPU 0 on {lab.node_name} is Unhealthy"

    # Every panel query has data while the fault is recent (the errors panel shows a code's
    # first error for one rate interval, 5m here) and the burn pods hold their devices.
    board = dashboard.build()
    assert time.time() - faulted_at < 300
    empty = [
        (title, expr)
        for title, expr in dashboard.queries(board)
        if not monitoring.query(monitoring.all_values(expr, rate_interval="5m"))
    ]
    assert not empty, f"panels without data from the in-cluster Prometheus: {empty}"

    driver_smi(lab, "clear-fault", "-i", "0")
    wait_for(f"{ALERT} resolved", lambda: not alerts(ALERT), timeout=60)


def test_summary_prints_every_headline_panel_with_a_value(monitored: LabCluster) -> None:
    values = monitoring.summary()
    titles = [t for t, _, _ in monitoring.headline_panels(dashboard.build())]
    assert [v.title for v in values] == titles
    by_title = {v.title: v.value for v in values}
    assert by_title["XPUs"] == str(PROFILE_COUNT)
    assert by_title["Allocated XPUs"] == "2", "xpu-burn holds two, the other six are free"
    holders = monitoring.query('count by (pod) (openxpu_device_info{pod=~"xpu-burn-.*"})')
    assert [r["value"][1] for r in holders] == ["2"]
    assert "no data" not in by_title.values(), by_title


@pytest.mark.bench
@pytest.mark.timeout(1200)
def test_bench_scrape_and_alert_latency(monitored: LabCluster) -> None:
    """Figures: a new ServiceMonitor -> its first sample queryable (the operator regenerates
    the config, the reloader reloads, Prometheus scrapes); a fault -> the alert firing."""
    lab = monitored
    # A second ServiceMonitor for the same exporters, its samples told apart by one label:
    # the time from applying it to its first sample needs no wait for the first one to go.
    smon = exporter_service_monitor()
    smon["metadata"]["name"] += "-bench"
    for endpoint in smon["spec"]["endpoints"]:
        endpoint.setdefault("relabelings", []).append(
            {"action": "replace", "targetLabel": "openxpu_bench", "replacement": "1"}
        )
    applied = time.time()
    lab.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(smon))
    try:
        stamp = wait_for(
            "a sample through the new ServiceMonitor",
            lambda: monitoring.query('min(timestamp(up{openxpu_bench="1"}))'),
            timeout=300,
        )
    finally:
        lab.kubectl("delete", "-f", "-", "--ignore-not-found", input_text=yaml.safe_dump(smon))
    first_sample = float(stamp[0]["value"][1]) - applied

    driver_smi(lab, "inject-fault", "-i", "1", "--code", "48")
    injected = time.time()
    wait_for(
        "pending",
        lambda: [a for a in alerts(ALERT) if a["labels"]["xpu"] == "1"],
        timeout=60,
    )
    pending = time.time() - injected
    wait_for(
        "firing",
        lambda: [a for a in alerts(ALERT) if a["labels"]["xpu"] == "1" and a["state"] == "firing"],
        timeout=180,
    )
    firing = time.time() - injected
    driver_smi(lab, "clear-fault", "-i", "1")
    cleared = time.time()
    wait_for("resolved", lambda: not alerts(ALERT), timeout=60)
    resolved = time.time() - cleared
    print(
        f"\nin-cluster monitoring (scrape and evaluation every {monitoring.SCRAPE_INTERVAL}):"
        f"\n  ServiceMonitor applied -> first sample queryable: {first_sample:.1f}s"
        f"\n  fault injected -> {ALERT} pending: {pending:.1f}s, firing (for: 1m): {firing:.1f}s"
        f"\n  fault cleared -> alert gone: {resolved:.1f}s"
    )
