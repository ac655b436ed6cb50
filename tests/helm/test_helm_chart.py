"""The chart rendered by the real helm: lint, golden renders, the values schema's refusals,
air-gapped images, the alert rules' Prometheus templates, the operator's RBAC audit, and
the files the chart copies from the operator and the exporter.

Regenerate the golden renders after an intended change with
`OPENXPU_UPDATE_GOLDEN=1 uv run pytest tests/helm/test_helm_chart.py`; the generated chart
files with `uv run python -m tests.helm.chart_gen`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from openxpu_exporter import render as exporter_render
from openxpu_operator.policy import load_policy

from . import chart_gen
from .support import DIGEST, MIRROR, VARIANTS, Doc, find, helm, is_hook, one, render, template

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
EXPECTED_RBAC = HERE / "expected-operator-rbac.yaml"
OPERATOR_RBAC = chart_gen.ROOT / "operator" / "deploy" / "rbac.yaml"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_render_matches_golden_file(variant: str) -> None:
    rendered = template(*VARIANTS[variant]).stdout
    golden = GOLDEN / f"{variant}.yaml"
    if os.environ.get("OPENXPU_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file {golden.name}: run with OPENXPU_UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"render of {variant} differs from {golden.name}"


def test_helm_lint_strict_passes_for_every_variant() -> None:
    for variant, args in VARIANTS.items():
        out = helm("lint", "--strict", str(chart_gen.CHART), *args, check=False)
        assert out.returncode == 0, f"{variant}: {out.stdout}{out.stderr}"


def test_generated_chart_files_are_current() -> None:
    """values.schema.json from the policy models, crds/ from openxpu_operator.crd, files/
    from the exporter, images.txt from `helm template`, the values reference in
    docs/install.md from values.schema.json: none may drift."""
    files = {**chart_gen.generated(), chart_gen.IMAGES_FILE: chart_gen.images_txt()}
    stale = [str(p.relative_to(chart_gen.ROOT)) for p in chart_gen.stale(files)]
    assert not stale, f"stale (run `uv run python -m tests.helm.chart_gen`): {stale}"


def test_packaged_chart_holds_every_file_and_renders_as_the_directory_does(
    tmp_path: Path,
) -> None:
    helm("package", str(chart_gen.CHART), "-d", str(tmp_path))
    (package,) = tmp_path.glob("openxpu-*.tgz")
    with tarfile.open(package) as tar:
        packaged = {name.removeprefix("openxpu/") for name in tar.getnames()}
    in_git = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "."],
        cwd=chart_gen.CHART,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert packaged == set(in_git)
    for args in (VARIANTS["defaults"], VARIANTS["monitoring"]):
        assert template(*args, chart=package).stdout == template(*args).stdout


def test_crd_in_chart_is_the_operators_generated_crd() -> None:
    chart_crd = (chart_gen.CHART / "crds" / "xpuclusterpolicies.openxpu.io.yaml").read_text()
    committed = chart_gen.ROOT / "operator/deploy/crds/xpuclusterpolicies.openxpu.io.yaml"
    assert chart_crd == committed.read_text()


# -- the policy built from values -----------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - {"no-policy"}))
def test_policy_from_values_is_one_the_operator_accepts(variant: str) -> None:
    policy = one(render(*VARIANTS[variant]), "XPUClusterPolicy")
    load_policy(policy)  # raises, naming the field, if the operator would refuse it


def test_every_policy_section_maps_one_to_one_into_the_spec() -> None:
    spec = one(render(*VARIANTS["policy-sections"]), "XPUClusterPolicy")["spec"]
    assert spec["driver"]["version"] == "0.2.0"
    assert spec["driver"]["profile"] == "x1-8"
    assert spec["devicePlugin"]["config"]["sharing"]["timeSlicing"]["replicas"] == 4
    assert spec["exporter"]["dcgmCompat"] is True
    assert spec["cdi"]["enabled"] is False
    assert spec["validator"]["workload"]["enabled"] is False
    assert spec["daemonsets"]["priorityClassName"] == "xpu-critical"
    assert spec["nodeSelector"] == {"openxpu.io/xpu.present": "true"}
    assert spec["operator"] == {"defaultRuntime": "crio", "labels": {"team": "ml"}}
    # Deployment settings stay out of the policy.
    assert "replicas" not in spec["operator"]


def test_no_policy_when_clusterpolicy_create_is_false() -> None:
    assert not find(render(*VARIANTS["no-policy"]), "XPUClusterPolicy")


def test_render_survives_each_top_level_value_set_to_null() -> None:
    """What `helm upgrade --reuse-values` from an older release may feed the chart."""
    values = yaml.safe_load((chart_gen.CHART / "values.yaml").read_text())
    for key in values:
        out = template(f"--set={key}=null", check=False)
        assert out.returncode == 0, f"{key}=null: {out.stderr}"


# -- values.schema.json refuses bad values before anything is applied -----------------------

BAD_VALUES: list[tuple[str, list[str], list[str]]] = [
    # (what, helm arguments, fragments the error must contain: the field's path)
    ("typo in a policy field", ["--set=driver.verison=1"], ["/driver", "verison"]),
    ("unknown top-level value", ["--set=drivers.enabled=true"], ["drivers"]),
    ("boolean as a string", ["--set=driver.enabled=maybe"], ["/driver/enabled"]),
    ("port not a number", ["--set=exporter.port=http"], ["/exporter/port"]),
    ("port out of range", ["--set=exporter.port=70000"], ["/exporter/port"]),
    ("driver version not a version", ["--set=driver.version=latest"], ["/driver/version"]),
    ("negative replicas", ["--set=operator.replicas=-1"], ["/operator/replicas"]),
    ("digest not sha256", ["--set=images.openxpu.digest=latest"], ["/images/openxpu/digest"]),
    (
        "unknown pull policy",
        ["--set=images.openxpu.pullPolicy=Sometimes"],
        ["/images/openxpu/pullPolicy"],
    ),
    ("create as a string", ["--set=clusterPolicy.create=yes"], ["/clusterPolicy/create"]),
    (
        "unknown update strategy",
        ["--set=daemonsets.updateStrategy=Sometimes"],
        ["/daemonsets/updateStrategy"],
    ),
    (
        "toleration with an unknown operator",
        ['--set-json=daemonsets.tolerations=[{"operator":"Sometimes"}]'],
        ["/daemonsets/tolerations/0/operator"],
    ),
    (
        "typo in a nested section",
        ["--set=exporter.serviceMonitor.enable=true"],
        ["/exporter/serviceMonitor", "enable"],
    ),
    ("typo in a chart value", ["--set=crds.deleteOnUninstal=true"], ["/crds", "deleteOnUninstal"]),
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_schema_refuses_bad_values_naming_the_field(bad: tuple[str, list[str], list[str]]) -> None:
    _, args, fragments = bad
    out = template(*args, check=False)
    assert out.returncode != 0, f"{args} was accepted"
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, f"{fragment!r} not named in: {out.stderr}"


def test_schema_leaves_global_open_for_a_parent_chart() -> None:
    template("--set=global.storageClass=fast")  # a parent chart's global: not ours to refuse
    out = template("--set=global.imageRegistry[0]=x", check=False)
    assert out.returncode != 0 and "/global/imageRegistry" in out.stderr, out.stderr


def test_schema_refuses_a_bad_values_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("driver:\n  image: 42\nexporter:\n  refreshInterval: [1s]\n")
    out = template("-f", str(bad), check=False)
    assert out.returncode != 0
    assert "/driver/image" in out.stderr and "/exporter/refreshInterval" in out.stderr, out.stderr


# -- images: one registry, digests, images.txt ----------------------------------------------


def test_air_gapped_every_image_from_the_mirror_pinned_by_digest() -> None:
    rendered = template(*VARIANTS["air-gapped"]).stdout
    images = chart_gen.images(rendered)
    assert images == [f"{MIRROR}/openxpu/openxpu:dev@{DIGEST}"], images
    # The operand images inside the policy are rewritten too, so the operator pulls from
    # the mirror.
    spec = one([d for d in yaml.safe_load_all(rendered) if d], "XPUClusterPolicy")["spec"]
    for section in ("driver", "cdi", "devicePlugin", "featureDiscovery", "exporter", "validator"):
        assert spec[section]["image"].startswith(f"{MIRROR}/"), section
    for doc in yaml.safe_load_all(rendered):
        pod = _pod_spec(doc) if doc else None
        if pod is not None:
            assert pod.get("imagePullSecrets") == [{"name": "mirror-credentials"}], doc["metadata"]


def test_images_txt_lists_every_image_of_the_default_render() -> None:
    listed = [
        line
        for line in (chart_gen.CHART / "images.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert listed == chart_gen.images(template().stdout) == ["openxpu/openxpu:dev"]


def test_an_operand_image_set_in_values_is_kept_and_listed() -> None:
    rendered = template("--set=exporter.image=example.com/exporter:1").stdout
    assert "example.com/exporter:1" in chart_gen.images(rendered)


def _pod_spec(doc: Doc) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        spec: dict[str, Any] = doc["spec"]
        return spec
    if doc["kind"] in ("Deployment", "Job"):
        inner: dict[str, Any] = doc["spec"]["template"]["spec"]
        return inner
    return None


def test_every_container_is_non_root_read_only_and_drops_all() -> None:
    for doc in render(*VARIANTS["monitoring"]):
        pod = _pod_spec(doc)
        if pod is None:
            continue
        for c in pod["containers"]:
            sc = c["securityContext"]
            where = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where


def test_operator_deployment_runs_the_operator_with_its_health_endpoint() -> None:
    deploy = one(render("--set=operator.livenessPort=9191"), "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["openxpu-operator"]
    assert container["args"][0] == "run"
    assert "--namespace=openxpu" in container["args"]
    assert "--liveness-port=9191" in container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 9191}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}


@pytest.mark.parametrize(("args", "replicas"), [((), 1), (("--set=operator.replicas=0",), 0)])
def test_operator_replicas_zero_stops_the_operator(args: tuple[str, ...], replicas: int) -> None:
    assert one(render(*args), "Deployment")["spec"]["replicas"] == replicas


def _operator_cli_help(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "openxpu_operator.cli", *args, "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout


@pytest.mark.skipif(
    " run " not in _operator_cli_help(), reason="the operator has no `run` command yet"
)
def test_operator_args_are_flags_the_operator_takes() -> None:
    container = one(render("--set=operator.verbose=true"), "Deployment")["spec"]["template"]
    args = container["spec"]["containers"][0]["args"]
    assert args[0] == "run"
    known = _operator_cli_help("run")
    for arg in args[1:]:
        flag = arg.split("=", 1)[0]
        assert re.search(rf"(^|\s){re.escape(flag)}\b", known), f"{flag} not in `run --help`"


# -- monitoring -----------------------------------------------------------------------------


def test_monitoring_is_off_by_default() -> None:
    docs = render()
    assert not find(docs, "PrometheusRule") and not find(docs, "ServiceMonitor")
    assert one(docs, "XPUClusterPolicy")["spec"]["exporter"].get("serviceMonitor") is None


def test_alert_rules_keep_their_prometheus_templates() -> None:
    docs = render(*VARIANTS["monitoring"])
    rule = one(docs, "PrometheusRule")
    asset = yaml.safe_load((exporter_render.ASSETS / exporter_render.RULES_FILE).read_text())
    assert rule["spec"] == asset
    annotations = [r["annotations"]["summary"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert any("{{ $labels.xpu }}" in a for a in annotations), annotations
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = one(docs, "XPUClusterPolicy")["spec"]["exporter"]["serviceMonitor"]
    assert spec == {"enabled": True, "additionalLabels": {"release": "kube-prometheus-stack"}}


def test_grafana_dashboard_configmap_carries_the_exporters_dashboard() -> None:
    cm = one(render(), "ConfigMap", "openxpu-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = cm["data"]["openxpu-dashboard.json"]
    assert json.loads(board) == json.loads(exporter_render.dashboard_json())


# -- RBAC -----------------------------------------------------------------------------------


def _rules(docs: list[Doc], component: str) -> dict[str, list[dict[str, Any]]]:
    """Rules of the (Cluster)Roles of one component, by kind/namespace."""
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        labels = doc["metadata"].get("labels") or {}
        if (
            doc["kind"] in ("ClusterRole", "Role")
            and labels.get("app.kubernetes.io/component") == component
        ):
            where = doc["kind"] + (
                f"/{doc['metadata']['namespace']}" if doc["kind"] == "Role" else ""
            )
            out.setdefault(where, []).extend(doc["rules"])
    return out


def test_no_wildcard_anywhere_in_the_charts_rbac() -> None:
    for variant in VARIANTS:
        for doc in render(*VARIANTS[variant]):
            for rule in doc.get("rules", []) if doc["kind"] in ("ClusterRole", "Role") else []:
                for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(key, []), (variant, doc["metadata"]["name"], rule)


def test_operator_rbac_is_exactly_the_audited_rules() -> None:
    """tests/helm/expected-operator-rbac.yaml is the reviewed list; a change to the chart's
    operator RBAC must change it too, in the same commit."""
    expected = yaml.safe_load(EXPECTED_RBAC.read_text())
    assert _rules(render(), "operator") == expected["default"]
    # Monitoring changes nothing: the operator prunes ServiceMonitors with it off too.
    assert _rules(render(*VARIANTS["monitoring"]), "operator") == expected["default"]


def _flat(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for r in rules
        for group in r.get("apiGroups", [])
        for resource in r["resources"]
        for verb in r["verbs"]
    }


@pytest.mark.skipif(not OPERATOR_RBAC.exists(), reason="operator/deploy/rbac.yaml not merged yet")
def test_operator_rbac_grants_what_the_operators_own_rbac_lists() -> None:
    """The operator lists its RBAC in one place (operator/deploy/rbac.yaml, checked against
    its code by the operator's tests); the chart grants the same API verbs, split by scope,
    plus finalizers (owner references with blockOwnerDeletion)."""
    theirs: set[tuple[str, str, str]] = set()
    for doc in yaml.safe_load_all(OPERATOR_RBAC.read_text()):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            theirs |= _flat(doc["rules"])
    ours: set[tuple[str, str, str]] = set()
    for rules in _rules(render(), "operator").values():
        ours |= _flat(rules)
    assert ours - {("openxpu.io", "xpuclusterpolicies/finalizers", "update")} == theirs


def test_hooks_have_only_the_rights_they_use() -> None:
    crd = "xpuclusterpolicies.openxpu.io"
    upgrade = _rules(render(), "crd-upgrade")
    assert upgrade == {
        "ClusterRole": [
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "resourceNames": [crd],
                "verbs": ["get", "patch"],
            }
        ]
    }
    cleanup = {
        "apiGroups": ["openxpu.io"],
        "resources": ["xpuclusterpolicies"],
        "verbs": ["list", "delete"],
    }
    assert _rules(render(), "cleanup") == {"ClusterRole": [cleanup]}
    assert not _rules(render(), "crd-delete")
    deletes_crd = render(*VARIANTS["uninstall-deletes-crd"])
    assert _rules(deletes_crd, "cleanup") == {"ClusterRole": [cleanup]}
    assert _rules(deletes_crd, "crd-delete") == {
        "ClusterRole": [
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "resourceNames": [crd],
                "verbs": ["delete"],
            }
        ]
    }
    assert not _rules(render(*VARIANTS["uninstall-deletes-crd"]), "crd-upgrade")


def test_hooks_and_test_pod_are_annotated_for_helm() -> None:
    docs = render()
    hooks = {
        (d["kind"], d["metadata"]["name"]): d["metadata"]["annotations"]["helm.sh/hook"]
        for d in docs
        if is_hook(d)
    }
    assert hooks[("Job", "openxpu-crd-upgrade")] == "pre-upgrade"
    assert hooks[("Job", "openxpu-cleanup")] == "pre-delete"
    assert ("Job", "openxpu-crd-delete") not in hooks  # crds.deleteOnUninstall is off
    deletes_crd = render(*VARIANTS["uninstall-deletes-crd"])
    job = one(deletes_crd, "Job", "openxpu-crd-delete")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["delete-crds", "xpuclusterpolicies.openxpu.io"]
    assert hooks[("Pod", "openxpu-test-xpu")] == "test"
    test_pod = one(docs, "Pod", "openxpu-test-xpu")
    # Helm's uninstall never deletes test hooks: a passed test pod must not outlive the run.
    policy = test_pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    assert "hook-succeeded" in policy.split(",")
    workload = test_pod["spec"]["containers"][0]
    assert workload["command"] == ["xpu-vectoradd"]
    assert workload["resources"]["limits"] == {"openxpu.io/xpu": 1}
    assert re.search(r"openxpu-exporter\.openxpu\.svc:9400/metrics", json.dumps(test_pod))


def test_the_crd_upgrade_hook_carries_the_charts_crd() -> None:
    cm = one(render(), "ConfigMap", "openxpu-crd-upgrade")
    chart_crd = (chart_gen.CHART / "crds" / "xpuclusterpolicies.openxpu.io.yaml").read_text()
    assert cm["data"]["xpuclusterpolicies.openxpu.io.yaml"] == chart_crd.rstrip("\n")
    assert cm["data"]["lifecycle.py"] == (
        chart_gen.CHART / "files/lifecycle.py"
    ).read_text().rstrip("\n")
