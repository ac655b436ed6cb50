"""`openxpu-lab up --monitoring`: the Prometheus Operator and one Prometheus it manages, in the
lab, the way kube-prometheus-stack runs them on a real cluster.

The operator and Prometheus are built from their Go modules (gobuild.py), the CRDs come from
the operator module's source, and both images are built locally (images/prometheus-operator:
the operator and its config reloader; images/prometheus: Prometheus; Debian's package cannot
serve: it is built without Kubernetes service discovery). The Prometheus selects
ServiceMonitors and PrometheusRules in every namespace by kube-prometheus-stack's default
label, `release: kube-prometheus-stack`, so objects labelled for a real kube-prometheus-stack
are picked up here unchanged. It scrapes and evaluates rules every 5s so the e2e tests see
samples and alerts quickly, and answers on a NodePort of the node address.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openxpu_lab import gobuild, paths, versions
from openxpu_lab.images import builder, openxpu
from openxpu_lab.progress import Progress
from openxpu_lab.settings import NODE_IP
from openxpu_lab.shell import LabError, run

NAMESPACE = "openxpu-monitoring"
# kube-prometheus-stack's default serviceMonitorSelector / ruleSelector for a release named
# kube-prometheus-stack: charts set it through their additionalLabels values.
SELECTOR_LABELS = {"release": "kube-prometheus-stack"}
PROMETHEUS_NAME = "openxpu-lab"
OPERATOR_NAME = "prometheus-operator"
PROMETHEUS_SA = "openxpu-lab-prometheus"
# Short on purpose (upstream's default is 30s): samples and alerts show within seconds.
SCRAPE_INTERVAL = "5s"
EVALUATION_INTERVAL = "5s"
NODE_PORT = 30090
# The operator shapes Prometheus's flags and config by this version.
PROMETHEUS_VERSION = versions.PROMETHEUS
# localhost/: built here, never pulled (like the lab's pause and busybox images).
OPERATOR_IMAGE = f"localhost/openxpu-lab/prometheus-operator:{versions.PROMETHEUS_OPERATOR}"
PROMETHEUS_IMAGE = f"localhost/openxpu-lab/prometheus:{PROMETHEUS_VERSION}"
# Labels of every object this module creates outside its namespace (for `remove`).
PART_OF = {"app.kubernetes.io/part-of": "openxpu-lab-monitoring"}
CRD_GROUP = "monitoring.coreos.com"
# The CRDs the Prometheus controller reads; the operator's other controllers (Alertmanager,
# ThanosRuler, PrometheusAgent) find no RBAC for theirs and stay off.
CRDS = (
    "prometheuses",
    "servicemonitors",
    "podmonitors",
    "probes",
    "prometheusrules",
    "scrapeconfigs",
)
READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete"]

# What the operator does with `--prometheus-instance-namespaces=openxpu-monitoring`: it reads
# monitors, rules and namespaces everywhere, and writes only in its own namespace.
OPERATOR_CLUSTER_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [CRD_GROUP],
        "resources": [
            "servicemonitors",
            "podmonitors",
            "probes",
            "prometheusrules",
            "scrapeconfigs",
        ],
        "verbs": READ,
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
    # Events on the monitors and rules it rejects, in their namespaces (it checks for this
    # right cluster-wide and emits none without it).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]
OPERATOR_NAMESPACE_RULES: list[dict[str, Any]] = [
    {"apiGroups": [CRD_GROUP], "resources": ["prometheuses"], "verbs": READ},
    {
        "apiGroups": [CRD_GROUP],
        "resources": ["prometheuses/status", "prometheuses/finalizers"],
        "verbs": ["update", "patch"],
    },
    {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": [*READ, *WRITE]},
    {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": [*READ, *WRITE]},
    {"apiGroups": [""], "resources": ["services", "endpoints"], "verbs": ["get", *WRITE]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "delete"]},
]
# Prometheus's own Kubernetes service discovery (endpoints role) in any namespace.
PROMETHEUS_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["services", "endpoints", "pods"], "verbs": READ},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
]


def url() -> str:
    """Where the lab's Prometheus answers from the host (the NodePort on the node address)."""
    return f"http://{NODE_IP}:{NODE_PORT}"


# ---- binaries, CRDs, images --------------------------------------------------------------


def crd_dir() -> Path:
    return paths.prometheus_operator_bin_dir().parent / "crds"


def ensure_crds(progress: Progress) -> Path:
    """The CRDs from the module's own source (example/prometheus-operator-crd), cached."""
    out = crd_dir()
    if out.is_dir() and all((out / f"{CRD_GROUP}_{c}.yaml").is_file() for c in CRDS):
        return out
    tool = gobuild.prometheus_operator_tool()
    with progress.step(f"the CRDs of {tool.module}@{tool.version}"):
        src = gobuild.module_source(tool) / "example" / "prometheus-operator-crd"
        tmp = out.with_name(".crds.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for c in CRDS:
            shutil.copyfile(src / f"{CRD_GROUP}_{c}.yaml", tmp / f"{CRD_GROUP}_{c}.yaml")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def _image_key(name: str, dockerfile: Path, *inputs: Path) -> str:
    h = hashlib.sha256(f"{openxpu.BUILDER} {name}".encode())
    for f in (dockerfile, *inputs):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _build(folder: str, name: str, inputs: list[Path], progress: Progress) -> Path:
    """The OCI archive of images/<folder> with `inputs` copied into its context, cached by
    the content of both."""
    dockerfile = openxpu.repo_root() / "images" / folder / "Dockerfile"
    out = paths.images_dir() / f"{folder}-{_image_key(name, dockerfile, *inputs)}.tar"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix=f"{folder}-ctx-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(dockerfile, ctx / "Dockerfile")
        for f in inputs:
            shutil.copy2(f, ctx / f.name)
        builder.build(ctx / "Dockerfile", ctx, name, out, progress)
    drop_older_archives(folder, out)
    return out


def drop_older_archives(folder: str, keep: Path) -> None:
    """Remove earlier builds of images/<folder> only: "prometheus-*" also matches the
    operator's archives."""
    for old in paths.images_dir().glob(f"{folder}-*.tar"):
        if old != keep and re.fullmatch(rf"{re.escape(folder)}-[0-9a-f]{{16}}\.tar", old.name):
            old.unlink()


def ensure_images(progress: Progress) -> list[Path]:
    """Build (once) the operator and Prometheus images; returns their OCI archives."""
    tool = gobuild.prometheus_operator_tool()
    gobuild.ensure(tool, progress)
    binaries = [tool.bin_dir / c for c in versions.PROMETHEUS_OPERATOR_COMMANDS]
    prometheus_tool = gobuild.prometheus_tool()
    gobuild.ensure(prometheus_tool, progress)
    return [
        _build("prometheus-operator", OPERATOR_IMAGE, binaries, progress),
        _build("prometheus", PROMETHEUS_IMAGE, [prometheus_tool.bin_dir / "prometheus"], progress),
    ]


# ---- manifests ---------------------------------------------------------------------------


def _meta(
    name: str, namespaced: bool = True, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**PART_OF, **(labels or {})}}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def _role(kind: str, name: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A (Cluster)Role and its binding to the ServiceAccount of the same name."""
    rbac = "rbac.authorization.k8s.io/v1"
    namespaced = kind == "Role"
    return [
        {"apiVersion": rbac, "kind": kind, "metadata": _meta(name, namespaced), "rules": rules},
        {
            "apiVersion": rbac,
            "kind": f"{kind}Binding",
            "metadata": _meta(name, namespaced),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
        },
    ]


_RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def operator_deployment() -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": OPERATOR_NAME}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(OPERATOR_NAME, labels=labels),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": OPERATOR_NAME,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65534},
                    "containers": [
                        {
                            "name": OPERATOR_NAME,
                            "image": OPERATOR_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "args": [
                                f"--prometheus-config-reloader={OPERATOR_IMAGE}",
                                f"--prometheus-instance-namespaces={NAMESPACE}",
                                "--web.listen-address=:8080",
                            ],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 5,
                            },
                            "resources": {
                                "requests": {"cpu": "20m", "memory": "64Mi"},
                                "limits": {"memory": "256Mi"},
                            },
                            "securityContext": _RESTRICTED,
                        }
                    ],
                },
            },
        },
    }


def prometheus() -> dict[str, Any]:
    return {
        "apiVersion": f"{CRD_GROUP}/v1",
        "kind": "Prometheus",
        "metadata": _meta(PROMETHEUS_NAME),
        "spec": {
            "version": PROMETHEUS_VERSION,
            "image": PROMETHEUS_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "replicas": 1,
            "serviceAccountName": PROMETHEUS_SA,
            "serviceMonitorSelector": {"matchLabels": SELECTOR_LABELS},
            "serviceMonitorNamespaceSelector": {},
            "podMonitorSelector": {"matchLabels": SELECTOR_LABELS},
            "podMonitorNamespaceSelector": {},
            "ruleSelector": {"matchLabels": SELECTOR_LABELS},
            "ruleNamespaceSelector": {},
            "scrapeInterval": SCRAPE_INTERVAL,
            "evaluationInterval": EVALUATION_INTERVAL,
            "retention": "1d",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "fsGroup": 65534},
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
        },
    }


def manifests() -> list[dict[str, Any]]:
    """Everything but the CRDs, in apply order."""
    sa = {"apiVersion": "v1", "kind": "ServiceAccount"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(NAMESPACE, namespaced=False)},
        {**sa, "metadata": _meta(OPERATOR_NAME)},
        *_role("ClusterRole", OPERATOR_NAME, OPERATOR_CLUSTER_RULES),
        *_role("Role", OPERATOR_NAME, OPERATOR_NAMESPACE_RULES),
        {**sa, "metadata": _meta(PROMETHEUS_SA)},
        *_role("ClusterRole", PROMETHEUS_SA, PROMETHEUS_RULES),
        operator_deployment(),
        prometheus(),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(f"{PROMETHEUS_NAME}-prometheus"),
            "spec": {
                "type": "NodePort",
                "selector": {
                    "app.kubernetes.io/name": "prometheus",
                    "app.kubernetes.io/instance": PROMETHEUS_NAME,
                },
                "ports": [{"name": "web", "port": 9090, "targetPort": 9090, "nodePort": NODE_PORT}],
            },
        },
    ]


# ---- install / remove --------------------------------------------------------------------


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
    argv: list[str | Path] = [gobuild.kubectl_path(), f"--kubeconfig={kubeconfig}", *args]
    stdin_bytes = stdin.encode() if stdin is not None else None
    return run(argv, input_bytes=stdin_bytes, timeout=timeout).stdout


def _apply(kubeconfig: Path, *args: str, stdin: str | None = None) -> None:
    # Server-side: the CRDs are too large for client-side apply's last-applied annotation.
    ssa = ("apply", "--server-side", "--force-conflicts", "--field-manager=openxpu-lab")
    _kubectl(kubeconfig, *ssa, *args, stdin=stdin, timeout=300)


def prometheus_ready(timeout: float = 3) -> bool:
    try:
        with urllib.request.urlopen(f"{url()}/-/ready", timeout=timeout) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def diagnose(kubeconfig: Path, lines: int = 8) -> str:
    """Pods of the namespace and the operator's and the config reloader's last log lines,
    for error messages."""
    said = []
    reloader = ("logs", f"statefulset/prometheus-{PROMETHEUS_NAME}", "-c", "config-reloader")
    for args in (
        ("get", "pods"),
        ("logs", f"deploy/{OPERATOR_NAME}", f"--tail={lines}"),
        (*reloader, f"--tail={lines}"),
    ):
        proc = run(
            [gobuild.kubectl_path(), f"--kubeconfig={kubeconfig}", "-n", NAMESPACE, *args],
            check=False,
            timeout=30,
        )
        said.append((proc.stdout or proc.stderr).strip())
    return "pods:\n{}\noperator log:\n{}\nconfig reloader log:\n{}".format(*said)


def _wait_established(kubeconfig: Path, timeout: float = 60) -> None:
    """Poll (`kubectl wait` fails outright on a CRD whose status has no conditions yet)."""
    names = [f"{c}.{CRD_GROUP}" for c in CRDS]
    deadline = time.monotonic() + timeout
    while True:
        crds = json.loads(_kubectl(kubeconfig, "get", "crd", *names, "-o=json"))["items"]
        conditions = [c for crd in crds for c in (crd.get("status") or {}).get("conditions") or []]
        if sum(c["type"] == "Established" and c["status"] == "True" for c in conditions) == len(
            names
        ):
            return
        if time.monotonic() > deadline:
            raise LabError(f"the Prometheus Operator's CRDs are not Established after {timeout}s")
        time.sleep(0.5)


def apply(kubeconfig: Path, progress: Progress) -> None:
    """The CRDs (once Established), then every other object of manifests()."""
    _apply(kubeconfig, "-f", str(ensure_crds(progress)))
    _wait_established(kubeconfig)
    listing = {"apiVersion": "v1", "kind": "List", "items": manifests()}
    _apply(kubeconfig, "-f", "-", stdin=json.dumps(listing))


def install(kubeconfig: Path, progress: Progress, timeout: float = 300) -> None:
    """Apply the CRDs, the operator and the Prometheus; return once Prometheus answers.
    The images must already be in every node's containerd (ensure_images + import)."""
    with progress.step(f"Prometheus Operator {versions.PROMETHEUS_OPERATOR} and a Prometheus"):
        apply(kubeconfig, progress)
        deadline = time.monotonic() + timeout
        while not prometheus_ready():
            if time.monotonic() > deadline:
                raise LabError(
                    f"the lab's Prometheus did not answer at {url()} within {timeout:.0f}s; "
                    + diagnose(kubeconfig)
                )
            time.sleep(1)


def remove(kubeconfig: Path, progress: Progress) -> None:
    """Remove the operator, the Prometheus and their RBAC. The CRDs stay (as Helm leaves
    CRDs), so other releases' ServiceMonitors and PrometheusRules are not deleted with them."""
    with progress.step("removing the Prometheus Operator and its Prometheus"):
        _kubectl(kubeconfig, "delete", "namespace", NAMESPACE, "--ignore-not-found", timeout=300)
        selector = ",".join(f"{k}={v}" for k, v in PART_OF.items())
        _kubectl(kubeconfig, "delete", "clusterrole,clusterrolebinding", "-l", selector)


# ---- what the demo prints ----------------------------------------------------------------


@dataclass(frozen=True)
class PanelValue:
    title: str
    expr: str
    value: str  # formatted in the panel's unit; "no data" when the query returned nothing


def dashboard_path() -> Path:
    """The Grafana dashboard as the exporter ships it (the chart carries the same file)."""
    return openxpu.repo_root() / "exporter/src/openxpu_exporter/assets/openxpu-dashboard.json"


def headline_panels(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(title, expr, unit) of the stat panels of the dashboard's first row."""
    found: list[tuple[str, str, str]] = []
    rows = 0
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            rows += 1
            if rows > 1:
                break
        elif panel["type"] == "stat":
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
            found += [(panel["title"], t["expr"], unit) for t in panel.get("targets", [])]
    return found


def all_values(expr: str, rate_interval: str = "1m") -> str:
    """A panel query with Grafana's variables set to "All" (`.*`), runnable as PromQL."""
    expr = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def _format(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "watt":
        return f"{value:.1f} W"
    return f"{value:g}"


def _require_lab_address() -> None:
    """The node address exists only while the lab is up; otherwise a request to it would
    leave the machine through the default route."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((NODE_IP, 0))
        except OSError as exc:
            raise LabError(
                f"the lab is not up ({NODE_IP} is no address of this machine): "
                "run `openxpu-lab up --monitoring`"
            ) from exc


def api(path: str, prom_url: str | None = None, timeout: float = 10, **params: str) -> Any:
    """The `data` of a Prometheus HTTP API answer; LabError when it does not answer or
    refuses the request."""
    if prom_url is None:
        _require_lab_address()
        prom_url = url()
    parts = urllib.parse.urlsplit(prom_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LabError(f"{prom_url!r} is not a Prometheus URL like http://127.0.0.1:9090")
    q = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{prom_url}/api/v1/{path}?{q}", timeout=timeout) as r:
            body = json.load(r)
    except urllib.error.HTTPError as exc:
        raise LabError(
            f"Prometheus at {prom_url} refused {path} {params}: HTTP {exc.code}"
        ) from exc
    except (OSError, ValueError) as exc:
        raise LabError(f"Prometheus does not answer at {prom_url}: {exc}") from exc
    return body["data"]


def query(expr: str, prom_url: str | None = None) -> list[dict[str, Any]]:
    """An instant query, evaluated now."""
    result: list[dict[str, Any]] = api("query", prom_url, query=expr)["result"]
    return result


def summary(prom_url: str | None = None) -> list[PanelValue]:
    """One query per headline panel of the dashboard with its current value."""
    dashboard = json.loads(dashboard_path().read_text())
    values = []
    for title, expr, unit in headline_panels(dashboard):
        runnable = all_values(expr)
        result = query(runnable, prom_url)
        shown = ", ".join(_format(float(r["value"][1]), unit) for r in result) or "no data"
        values.append(PanelValue(title, runnable, shown))
    return values
