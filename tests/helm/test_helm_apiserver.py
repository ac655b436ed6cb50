"""The chart against a real kube-apiserver (the lab's apiserver-only mode, no nodes):
`helm install` creates the CRD, the operator, its RBAC and a default policy the CRD's
admission accepts; every rendered object passes a server-side dry run; `helm upgrade`
leaves the CRD alone and the pre-upgrade hook's command carries the change; the pre-delete
hook waits for the operator's finalizer; `helm uninstall` removes everything of ours.

Without nodes no hook Job can run (no kubelet, no controller manager), so the hooks are
proven by what the Job would do: its rendered ServiceAccount and RBAC are applied, a token
of that ServiceAccount is issued, and the Job's own command runs here against the API server
with the files of its rendered ConfigMap. Helm itself runs with --no-hooks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from openxpu_lab import apiserver_only
from openxpu_lab.envtest import ApiServer
from openxpu_lab.gobuild import kubectl_path

from .chart_gen import CHART
from .support import VARIANTS, Doc, helm, is_hook, one, render

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 and not os.path.exists("/usr/bin/etcd"),
        reason="needs etcd (root installs it with apt)",
    ),
]

NS = "openxpu"
CRD = "xpuclusterpolicies.openxpu.io"
# Kinds whose CRDs (the Prometheus Operator's) an apiserver-only cluster does not have.
NO_CRD_HERE = {"ServiceMonitor", "PrometheusRule"}


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with apiserver_only() as server:
        yield server


def kubectl(
    api: ApiServer, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [str(kubectl_path()), "--kubeconfig", str(api.kubeconfig), *args]
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
    return out


def get(api: ApiServer, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl(api, "get", *args, "-o", "json").stdout)
    return result


def exists(api: ApiServer, *args: str) -> bool:
    return kubectl(api, "get", *args, check=False).returncode == 0


def wait_for(what: str, check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


# Everything of ours a release creates (hooks aside): (kind, name, namespace or "").
OURS = [
    ("deployment", "openxpu-operator", NS),
    ("service", "openxpu-operator", NS),
    ("serviceaccount", "openxpu-operator", NS),
    ("role", "openxpu-operator", NS),
    ("rolebinding", "openxpu-operator", NS),
    ("role", "openxpu-operator-events", "default"),
    ("rolebinding", "openxpu-operator-events", "default"),
    ("clusterrole", "openxpu-operator", ""),
    ("clusterrolebinding", "openxpu-operator", ""),
    ("configmap", "openxpu-grafana-dashboard", NS),
    ("xpuclusterpolicy", "default", ""),
]


def _where(namespace: str) -> list[str]:
    return ["-n", namespace] if namespace else []


@pytest.fixture(scope="module")
def installed(api: ApiServer) -> ApiServer:
    out = helm(
        "install", "openxpu", str(CHART), "-n", NS, "--create-namespace", kubeconfig=api.kubeconfig
    )
    assert "helm test openxpu" in out.stdout  # NOTES.txt says what to run next
    # The controller manager's part, absent here: the namespace's default ServiceAccount
    # (the helm test pod runs under it).
    kubectl(api, "create", "serviceaccount", "default", "-n", NS)
    return api


def test_helm_install_creates_crd_operator_rbac_and_default_policy(installed: ApiServer) -> None:
    crd = get(installed, "crd", CRD)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions.get("NonStructuralSchema") is None
    for kind, name, namespace in OURS:
        assert exists(installed, kind, name, *_where(namespace)), f"{kind}/{name} missing"
    deploy = get(installed, "deployment", "openxpu-operator", "-n", NS)
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "openxpu-operator"
    # The policy passed the CRD's admission (schema + CEL) and got the server's defaults.
    policy = get(installed, "xpuclusterpolicy", "default")
    spec = policy["spec"]
    assert spec["driver"]["image"] == "openxpu/openxpu:dev"
    assert spec["driver"]["enabled"] is True and spec["driver"]["version"]
    assert spec["devicePlugin"]["config"]["flags"]["resourceName"] == "openxpu.io/xpu"


def test_operator_service_account_may_do_what_the_operator_does(installed: ApiServer) -> None:
    sa = f"system:serviceaccount:{NS}:openxpu-operator"
    allowed = [
        ("patch", "nodes", NS),
        ("patch", "xpuclusterpolicies.openxpu.io/status", NS),
        ("create", "daemonsets.apps", NS),
        ("get", "pods/log", NS),
        ("update", "leases.coordination.k8s.io", NS),
        ("create", "events", "default"),
        ("create", "clusterroles.rbac.authorization.k8s.io", NS),
    ]
    denied = [
        ("create", "daemonsets.apps", "kube-system"),  # operands only in its namespace
        ("delete", "nodes", NS),
        ("get", "secrets", NS),
        ("delete", "customresourcedefinitions.apiextensions.k8s.io", NS),
    ]
    for verb, resource, namespace in allowed + denied:
        out = kubectl(
            installed, "auth", "can-i", verb, resource, "-n", namespace, "--as", sa, check=False
        )
        expected = "yes" if (verb, resource, namespace) in allowed else "no"
        assert out.stdout.strip() == expected, f"{verb} {resource} -n {namespace}: {out.stdout}"
    # With monitoring off too: every reconcile lists ServiceMonitors to prune (a 403 there
    # stopped the operator on the lab). Asked as a SelfSubjectAccessReview: `kubectl auth
    # can-i` answers "no" for any type the server has no CRD for, granted or not.
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "namespace": NS,
                "verb": "list",
                "group": "monitoring.coreos.com",
                "resource": "servicemonitors",
            }
        },
    }
    out = kubectl(
        installed, "create", "--as", sa, "-o", "json", "-f", "-", stdin=json.dumps(review)
    )
    assert json.loads(out.stdout)["status"].get("allowed") is True, out.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_passes_a_server_side_dry_run(
    installed: ApiServer, variant: str
) -> None:
    docs = [d for d in render(*VARIANTS[variant]) if d["kind"] not in NO_CRD_HERE]
    stream = yaml.safe_dump_all(docs)
    out = kubectl(
        installed,
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=dry-run",
        "--dry-run=server",
        "-f",
        "-",
        stdin=stream,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_a_value_only_the_crds_cel_rules_refuse_fails_at_admission_naming_it(
    installed: ApiServer,
) -> None:
    """The schema cannot say "a duration of at most 5m"; the CRD's CEL rule can, and the
    API server refuses the policy Helm would apply."""
    docs = render("--set=exporter.refreshInterval=10m", "--show-only=templates/clusterpolicy.yaml")
    out = kubectl(
        installed,
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(docs),
        check=False,
    )
    assert out.returncode != 0
    assert "spec.exporter.refreshInterval" in out.stderr, out.stderr


def _hook_docs(component: str, *args: str, chart: Path = CHART) -> list[Doc]:
    docs = render("--show-only=templates/hooks.yaml", *args, chart=chart)
    return [
        d
        for d in docs
        if is_hook(d) and d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]


def _run_hook(
    api: ApiServer, component: str, workdir: Path, *args: str, chart: Path = CHART
) -> subprocess.Popen[str]:
    """Do what the hook Job's pod would: as its ServiceAccount (rendered RBAC applied, a
    token issued), run its command with the files of its ConfigMap."""
    docs = _hook_docs(component, *args, chart=chart)
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    kubectl(api, "apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    token = kubectl(api, "create", "token", sa, "-n", NS).stdout.strip()
    hook_dir = workdir / component
    hook_dir.mkdir()
    (hook_dir / "token").write_text(token)
    for name, text in one(docs, "ConfigMap")["data"].items():
        (hook_dir / name).write_text(text)
    job = one(docs, "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    command = [c.replace("/hook/", f"{hook_dir}/") for c in container["command"]]
    assert command[0] == "python3"
    argv = [
        sys.executable,
        command[1],
        f"--server={api.url}",
        f"--token-file={hook_dir / 'token'}",
        f"--ca-file={api.ca_cert}",
        *command[2:],
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _crd_driver_fields(api: ApiServer) -> set[str]:
    crd = get(api, "crd", CRD)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return set(spec["properties"]["driver"]["properties"])


def test_helm_upgrade_carries_a_crd_change_through_the_pre_upgrade_hook(
    installed: ApiServer, tmp_path: Path
) -> None:
    # The next chart version: its CRD has a new driver field.
    chart = tmp_path / "openxpu"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    (chart / "Chart.yaml").write_text(yaml.safe_dump({**meta, "version": "0.2.0"}))
    crd_file = chart / "crds" / f"{CRD}.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    driver = schema["properties"]["spec"]["properties"]["driver"]
    driver["properties"]["newSetting"] = {"type": "string", "description": "added in 0.2.0"}
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    assert "newSetting" not in _crd_driver_fields(installed)

    helm(
        "upgrade",
        "openxpu",
        str(chart),
        "-n",
        NS,
        "--no-hooks",
        "--reuse-values",
        kubeconfig=installed.kubeconfig,
    )
    # Helm never upgrades crds/: without the hook the new field would be pruned.
    assert "newSetting" not in _crd_driver_fields(installed)

    rc, output = _finish(_run_hook(installed, "crd-upgrade", tmp_path, chart=chart))
    assert rc == 0, output
    assert f"applied CRD {CRD}" in output
    assert "newSetting" in _crd_driver_fields(installed)
    policy = {
        "apiVersion": "openxpu.io/v1",
        "kind": "XPUClusterPolicy",
        "metadata": {"name": "upgraded"},
        "spec": {"driver": {"newSetting": "kept"}},
    }
    kubectl(installed, "apply", "-f", "-", stdin=json.dumps(policy))
    assert get(installed, "xpuclusterpolicy", "upgraded")["spec"]["driver"]["newSetting"] == "kept"
    kubectl(installed, "delete", "xpuclusterpolicy", "upgraded")
    # The hook's account may apply that CRD and nothing else.
    sa = f"system:serviceaccount:{NS}:openxpu-crd-upgrade"
    can = kubectl(
        installed,
        "auth",
        "can-i",
        "delete",
        f"customresourcedefinitions/{CRD}",
        "--as",
        sa,
        check=False,
    )
    assert can.stdout.strip() == "no"


def test_helm_uninstall_waits_for_the_operators_cleanup_and_leaves_nothing(
    installed: ApiServer, tmp_path: Path
) -> None:
    # Play the operator's part: its finalizer holds the policy until it has cleaned up.
    kubectl(
        installed,
        "patch",
        "xpuclusterpolicy",
        "default",
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":["openxpu.io/cleanup"]}}',
    )
    cleanup = _run_hook(installed, "cleanup", tmp_path)
    wait_for(
        "the policy's deletion to start",
        lambda: "deletionTimestamp" in get(installed, "xpuclusterpolicy", "default")["metadata"],
    )
    time.sleep(2)
    assert cleanup.poll() is None, "the pre-delete hook did not wait for the finalizer"
    kubectl(
        installed,
        "patch",
        "xpuclusterpolicy",
        "default",
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )
    rc, output = _finish(cleanup)
    assert rc == 0, output
    assert "the operator has cleaned up" in output
    assert get(installed, "xpuclusterpolicies")["items"] == []

    helm("uninstall", "openxpu", "-n", NS, "--no-hooks", kubeconfig=installed.kubeconfig)
    wait_for(
        "the release's objects to go",
        lambda: not any(exists(installed, k, n, *_where(ns)) for k, n, ns in OURS),
    )
    assert exists(installed, "crd", CRD)  # kept unless crds.deleteOnUninstall

    rc, output = _finish(
        _run_hook(installed, "crd-delete", tmp_path, "--set=crds.deleteOnUninstall=true")
    )
    assert rc == 0, output
    wait_for("the CRD to go", lambda: not exists(installed, "crd", CRD))
    releases = helm("list", "-A", "-q", kubeconfig=installed.kubeconfig).stdout
    assert releases.strip() == ""
    for kind, name in [("clusterrole", "openxpu-cleanup"), ("clusterrole", "openxpu-crd-delete")]:
        kubectl(installed, "delete", kind, name)  # the hooks' own (Helm deletes them on success)
