"""`up --monitoring`: the manifests against a real API server (RBAC as the operator checks
it), the demo's summary against a real Prometheus, the image cache."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from exporter.prometheus import Prometheus
from exporter.support import free_port

from openxpu_exporter import dashboard
from openxpu_lab import apiserver_only, cli, gobuild, monitoring
from openxpu_lab.envtest import ApiServer
from openxpu_lab.gobuild import kubectl_path
from openxpu_lab.progress import Progress
from openxpu_lab.shell import LabError

NS = monitoring.NAMESPACE
OPERATOR = f"system:serviceaccount:{NS}:{monitoring.OPERATOR_NAME}"
PROMETHEUSES = f"prometheuses.{monitoring.CRD_GROUP}"
PROMETHEUS = f"system:serviceaccount:{NS}:{monitoring.PROMETHEUS_SA}"


@pytest.mark.unit
def test_headline_panels_are_the_overview_stats_of_the_shipped_dashboard() -> None:
    board = dashboard.build()
    overview = [p["title"] for p in board["panels"][1:7]]
    panels = monitoring.headline_panels(board)
    assert [title for title, _, _ in panels] == overview
    assert [unit for _, _, unit in panels][3:] == ["percentunit", "percentunit", "watt"]
    # The file summary() reads is the dashboard the exporter builds.
    shipped = json.loads(monitoring.dashboard_path().read_text())
    assert monitoring.headline_panels(shipped) == panels


@pytest.mark.unit
def test_every_panel_query_runs_with_all_values() -> None:
    for _, expr in dashboard.queries(dashboard.build()):
        runnable = monitoring.all_values(expr)
        assert "$" not in runnable, runnable
    assert (
        monitoring.all_values('rate(x{a=~"$a", b=~"${b}"}[$__rate_interval])')
        == 'rate(x{a=~".*", b=~".*"}[1m])'
    )


@pytest.mark.unit
def test_rbac_names_every_verb_and_resource() -> None:
    roles = [o for o in monitoring.manifests() if o["kind"] in ("Role", "ClusterRole")]
    assert len(roles) == 3
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert "*" not in rule["apiGroups"], rule


@pytest.mark.unit
def test_prometheus_selects_monitors_and_rules_by_the_release_label() -> None:
    (prom,) = [o for o in monitoring.manifests() if o["kind"] == "Prometheus"]
    spec = prom["spec"]
    assert spec["serviceMonitorSelector"] == {"matchLabels": {"release": "kube-prometheus-stack"}}
    assert spec["ruleSelector"] == spec["serviceMonitorSelector"]
    assert spec["serviceMonitorNamespaceSelector"] == spec["ruleNamespaceSelector"] == {}
    assert spec["image"] == monitoring.PROMETHEUS_IMAGE
    assert spec["evaluationInterval"] == spec["scrapeInterval"] == "5s"


@pytest.mark.unit
def test_a_new_image_build_drops_only_its_own_older_archives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENXPU_CACHE", str(tmp_path))
    images = tmp_path / "images"
    images.mkdir()
    names = [
        "prometheus-0123456789abcdef.tar",
        "prometheus-fedcba9876543210.tar",
        "prometheus-operator-0123456789abcdef.tar",
        "openxpu-0123456789abcdef.tar",
    ]
    for n in names:
        (images / n).write_bytes(b"")
    monitoring.drop_older_archives("prometheus", images / names[1])
    assert sorted(p.name for p in images.iterdir()) == sorted(names[1:])


def _can_i(api: ApiServer, user: str, *args: str) -> bool:
    proc = subprocess.run(
        [str(kubectl_path()), "auth", "can-i", f"--as={user}", *args],
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() in ("yes", "no"), proc.stderr
    return proc.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def applied() -> Iterator[ApiServer]:
    """Every object of `up --monitoring` applied to a real API server (no nodes: nothing
    runs, the objects and their RBAC are what is checked)."""
    with apiserver_only() as api:
        monitoring.apply(api.kubeconfig, Progress(quiet=True))
        yield api


@pytest.mark.integration
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("user", "args"),
    [
        # What the operator's startup checks ask (SelfSubjectAccessReviews) for Prometheus.
        (OPERATOR, ("list", PROMETHEUSES, "-n", NS)),
        (
            OPERATOR,
            ("update", f"prometheuses.{monitoring.CRD_GROUP}", "--subresource=status", "-n", NS),
        ),
        # Monitors and rules anywhere; its StatefulSet, config Secret, rule ConfigMaps at home.
        (OPERATOR, ("watch", "servicemonitors.monitoring.coreos.com", "-A")),
        (OPERATOR, ("list", "prometheusrules.monitoring.coreos.com", "-A")),
        (OPERATOR, ("create", "statefulsets", "-n", NS)),
        (OPERATOR, ("update", "secrets", "-n", NS)),
        (OPERATOR, ("create", "events", "-n", "openxpu")),
        (PROMETHEUS, ("watch", "endpoints", "-A")),
        (PROMETHEUS, ("list", "pods", "-n", "openxpu")),
    ],
)
def test_the_operator_and_prometheus_may_do_their_work(
    applied: ApiServer, user: str, args: tuple[str, ...]
) -> None:
    assert _can_i(applied, user, *args)


@pytest.mark.integration
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("user", "args"),
    [
        (OPERATOR, ("create", "statefulsets", "-n", "default")),
        (OPERATOR, ("get", "secrets", "-n", "openxpu")),
        (OPERATOR, ("delete", "servicemonitors.monitoring.coreos.com", "-n", "openxpu")),
        # Its other controllers stay off: it finds no rights for them.
        (OPERATOR, ("list", "alertmanagers.monitoring.coreos.com", "-n", NS)),
        (OPERATOR, ("list", "thanosrulers.monitoring.coreos.com", "-n", NS)),
        (OPERATOR, ("create", "clusterroles")),
        (PROMETHEUS, ("get", "secrets", "-n", NS)),
        (PROMETHEUS, ("create", "pods", "-n", "openxpu")),
    ],
)
def test_nothing_more(applied: ApiServer, user: str, args: tuple[str, ...]) -> None:
    assert not _can_i(applied, user, *args)


@pytest.mark.integration
def test_summary_asks_a_real_prometheus_each_headline_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No targets: the count of XPUs has no data, the allocated ones fall back to vector(0).
    prom = Prometheus(tmp_path / "prometheus", [], {"groups": []}).start()
    try:
        values = {v.title: v for v in monitoring.summary(prom.url)}
        capsys.readouterr()
        assert cli.main(["monitoring", "summary", "--url", prom.url]) == 0
        printed = capsys.readouterr().out.splitlines()
        assert cli.main(["monitoring", "summary", "--url", prom.url, "--json"]) == 0
        as_json = json.loads(capsys.readouterr().out)
    finally:
        prom.stop()
    assert printed[0] == f"Prometheus answers at {prom.url}"
    assert "release=kube-prometheus-stack" in printed[1]
    allocated = next(line for line in printed if "Allocated XPUs" in line).split()
    assert allocated[2] == "0" and " ".join(allocated[3:]) == values["Allocated XPUs"].expr
    assert [v["title"] for v in as_json] == list(values)
    assert list(values) == [t for t, _, _ in monitoring.headline_panels(dashboard.build())]
    assert values["XPUs"].value == "no data"
    assert values["Allocated XPUs"].value == "0"
    assert "$" not in values["XPUs"].expr


@pytest.mark.unit
def test_summary_without_prometheus_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LabError, match=f"does not answer at {dead}"):
        monitoring.summary(dead)
    assert cli.main(["monitoring", "summary", "--url", dead]) == 1
    err = capsys.readouterr().err
    assert err.startswith("openxpu-lab: error: Prometheus does not answer") and err.count("\n") == 1


@pytest.mark.unit
def test_summary_refuses_what_is_not_a_running_lab_or_an_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without the lab its node address is routed off the machine: never asked.
    monkeypatch.setattr(monitoring, "NODE_IP", "192.0.2.1")
    with pytest.raises(LabError, match=r"the lab is not up \(192\.0\.2\.1 is no address"):
        monitoring.summary()
    with pytest.raises(LabError, match="is not a Prometheus URL"):
        monitoring.summary("localhost:9090")


def _run_prometheus(binary: Path, workdir: Path) -> tuple[bool, str]:
    """Start `binary` on a config with one kubernetes_sd_configs job (what the operator makes
    of a ServiceMonitor); (whether it became ready, its log)."""
    workdir.mkdir(parents=True)
    config = {
        "scrape_configs": [
            {
                "job_name": "serviceMonitor/openxpu/openxpu-exporter/0",
                # A closed loopback port: discovery fails, loading the config must not.
                "kubernetes_sd_configs": [
                    {"role": "endpoints", "api_server": f"http://127.0.0.1:{free_port()}"}
                ],
            }
        ]
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    log = workdir / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if monitoring_ready(f"http://127.0.0.1:{port}"):
                return True, log.read_text()
            time.sleep(0.2)
        return False, log.read_text()
    finally:
        proc.terminate()
        proc.wait(20)


def monitoring_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.mark.integration
@pytest.mark.timeout(3600)
def test_the_lab_prometheus_loads_what_the_operator_makes_of_a_service_monitor(
    tmp_path: Path,
) -> None:
    tool = gobuild.prometheus_tool()
    gobuild.ensure(tool, Progress(quiet=True))
    ready, log = _run_prometheus(tool.bin_dir / "prometheus", tmp_path / "built")
    assert ready, log[-2000:]
    # Why it is built: Debian's package refuses the same config (no Kubernetes discovery).
    debian = Path("/usr/bin/prometheus")
    if debian.exists():
        ready, log = _run_prometheus(debian, tmp_path / "debian")
        assert not ready and "field kubernetes_sd_configs not found" in log
