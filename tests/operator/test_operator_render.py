"""Operands as data: golden renders per spec variant, and the rules every object obeys.

Regenerate the golden files after an intended change with
`OPENXPU_UPDATE_GOLDEN=1 uv run pytest tests/operator/test_operator_render.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from openxpu_operator.policy import XPUClusterPolicy, load_policy
from openxpu_operator.render import (
    KINDS,
    OPERANDS,
    RenderContext,
    RenderError,
    _environment,
    object_path,
    render_operands,
    to_yaml,
)

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
UID = "2f1c8a53-6a53-4b8e-9a4e-3c1f0e0b7d11"
NODES = ("xpu-node-1", "xpu-node-2")

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything-off": {
        "driver": {"enabled": False},
        "cdi": {"enabled": False},
        "devicePlugin": {"enabled": False},
        "featureDiscovery": {"enabled": False},
        "exporter": {"enabled": False},
        "validator": {"enabled": False},
    },
    "time-slicing": {
        "devicePlugin": {
            "config": {
                "sharing": {
                    "timeSlicing": {
                        "replicas": 4,
                        "renameByDefault": True,
                        "memoryPerReplica": "4Gi",
                    }
                }
            }
        }
    },
    "dcgm-compat": {
        "exporter": {
            "dcgmCompat": True,
            "refreshInterval": "500ms",
            "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "prometheus"}},
        }
    },
    "two-profile-pools": {
        "operator": {"labels": {"team": "ml"}},
        "daemonsets": {
            "tolerations": [{"key": "openxpu.io/xpu", "operator": "Exists", "effect": "NoSchedule"}]
        },
        "emulation": {
            "defaultProfile": "x1-2",
            "profiles": {"x1-4-small": {"base": "x1-8", "devices": 4, "memoryMiB": 32768}},
            "nodePools": [
                {"name": "big", "nodeSelector": {"pool": "big"}, "profile": "x1-8"},
                {"name": "small", "nodeSelector": {"pool": "small"}, "profile": "x1-4-small"},
            ],
        },
    },
}


def policy(spec: dict[str, Any]) -> XPUClusterPolicy:
    return load_policy({"metadata": {"name": "cluster-policy", "uid": UID}, "spec": spec})


def _objects(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o.name, obj)
        for o in render_operands(policy(spec), RenderContext(nodes=NODES))
        for obj in o.objects
    ]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_render_matches_golden_file(variant: str) -> None:
    rendered = to_yaml(render_operands(policy(VARIANTS[variant]), RenderContext(nodes=NODES)))
    golden = GOLDEN / f"{variant}.yaml"
    if os.environ.get("OPENXPU_UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.exists(), f"no {golden}: run with OPENXPU_UPDATE_GOLDEN=1 to create it"
    assert rendered == golden.read_text(), (
        f"{variant} drifted from {golden}; if intended, regenerate with OPENXPU_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_is_owned_and_labelled(variant: str) -> None:
    for _, obj in _objects(VARIANTS[variant]):
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "openxpu-operator"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "openxpu.io/v1",
                "kind": "XPUClusterPolicy",
                "name": "cluster-policy",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def _pod_specs(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"])
        for _, obj in _objects(spec)
        if obj["kind"] in ("DaemonSet", "Job")
    ]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_least_privilege_only_the_driver_is_privileged(variant: str) -> None:
    for name, pod in _pod_specs(VARIANTS[variant]):
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            if name.startswith("DaemonSet/openxpu-driver-") and c["name"] == "driver":
                assert sc == {"privileged": True}
                continue
            assert not sc.get("privileged"), (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
        assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_kind_is_known_and_namespaced_as_declared(variant: str) -> None:
    for _, obj in _objects(VARIANTS[variant]):
        _, namespaced = KINDS[(obj["apiVersion"], obj["kind"])]
        assert ("namespace" in obj["metadata"]) == namespaced, object_path(obj)


def test_disabled_operands_render_nothing() -> None:
    rendered = render_operands(policy(VARIANTS["everything-off"]), RenderContext(nodes=NODES))
    assert [o.name for o in rendered] == [o.name for o in OPERANDS]
    assert all(not o.enabled and o.objects == [] for o in rendered)
    exporter_off = render_operands(policy({"exporter": {"enabled": False}}))
    assert [o.name for o in exporter_off if not o.enabled] == ["exporter"]
    assert [o.name for o in exporter_off if not o.objects] == ["exporter", "workload-validation"]


def test_operand_order_is_the_gpu_operators() -> None:
    assert [o.name for o in OPERANDS] == [
        "driver",
        "cdi",
        "driver-validation",
        "device-plugin",
        "feature-discovery",
        "exporter",
        "workload-validation",
    ]
    assert [o.folder for o in OPERANDS] == sorted(o.folder for o in OPERANDS)
    assert [o.condition for o in OPERANDS][:4] == [
        "DriverReady",
        "CDIReady",
        "DriverValidationReady",
        "DevicePluginReady",
    ]


def test_one_onDelete_driver_daemonset_per_profile_pool() -> None:
    drivers = [
        obj
        for name, obj in _objects(VARIANTS["two-profile-pools"])
        if name == "driver" and obj["kind"] == "DaemonSet"
    ]
    by_profile = {
        d["spec"]["template"]["spec"]["nodeSelector"]["openxpu.io/emulation.profile"]: d
        for d in drivers
    }
    assert sorted(by_profile) == ["x1-2", "x1-4-small", "x1-8"]
    for profile, ds in by_profile.items():
        assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
        pod = ds["spec"]["template"]["spec"]
        assert pod["nodeSelector"]["openxpu.io/xpu.deploy.driver"] == "true"
        command = pod["containers"][0]["command"]
        argument = command[command.index("--profile") + 1]
        if profile == "x1-4-small":
            assert argument == "/etc/openxpu/profiles/x1-4-small.json"
        else:
            assert argument == profile
    profiles = next(
        obj for _, obj in _objects(VARIANTS["two-profile-pools"]) if obj["kind"] == "ConfigMap"
    )
    small = yaml.safe_load(profiles["data"]["x1-4-small.json"])
    assert small["count"] == 4 and small["memory_mib"] == 32768 and small["link_groups"] == 2


def test_operands_wait_for_the_node_local_barriers() -> None:
    waits = {
        obj["metadata"]["name"]: [
            c["name"] for c in obj["spec"]["template"]["spec"].get("initContainers", [])
        ]
        for _, obj in _objects({})
        if obj["kind"] == "DaemonSet"
    }
    assert waits["openxpu-device-plugin"] == ["wait-for-driver", "wait-for-cdi"]
    assert waits["openxpu-feature-discovery"] == ["wait-for-driver"]
    assert waits["openxpu-exporter"] == ["wait-for-driver"]
    assert waits["openxpu-operator-validator"] == ["driver-validation", "wait-for-cdi"]
    no_cdi = {
        obj["metadata"]["name"]: [
            c["name"] for c in obj["spec"]["template"]["spec"].get("initContainers", [])
        ]
        for _, obj in _objects({"cdi": {"enabled": False}})
        if obj["kind"] == "DaemonSet"
    }
    assert no_cdi["openxpu-device-plugin"] == ["wait-for-driver"]
    assert "openxpu-cdi" not in no_cdi


def test_workload_validation_is_one_job_per_node_on_one_xpu() -> None:
    jobs = [obj for name, obj in _objects({}) if name == "workload-validation"]
    assert [j["metadata"]["annotations"]["openxpu.io/validation-node"] for j in jobs] == list(NODES)
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["command"] == ["xpu-vectoradd"]
        assert pod["containers"][0]["resources"]["limits"] == {"openxpu.io/xpu": 1}
        assert len(job["metadata"]["name"]) <= 63
    shared = [
        obj for name, obj in _objects(VARIANTS["time-slicing"]) if name == "workload-validation"
    ]
    limits = shared[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"openxpu.io/xpu.shared": 1}


def test_cdi_default_makes_the_plugin_answer_with_cdi_names_only() -> None:
    config_map = next(
        obj
        for name, obj in _objects({"cdi": {"default": True}})
        if name == "device-plugin" and obj["kind"] == "ConfigMap"
    )
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["flags"]["deviceListStrategy"] == ["cdi"]


def test_changed_plugin_config_changes_the_pod_template() -> None:
    def annotation(spec: dict[str, Any]) -> str:
        ds = next(
            obj
            for name, obj in _objects(spec)
            if name == "device-plugin" and obj["kind"] == "DaemonSet"
        )
        value: str = ds["spec"]["template"]["metadata"]["annotations"]["openxpu.io/config-hash"]
        return value

    assert annotation({}) != annotation(VARIANTS["time-slicing"])


def test_templates_refuse_undefined_variables() -> None:
    with pytest.raises(jinja2.UndefinedError):
        _environment().from_string("image: {{ spec.driver.imagee }}").render(spec={})


def test_owner_needs_a_uid() -> None:
    no_uid = load_policy({"metadata": {"name": "p"}, "spec": {}})
    with pytest.raises(RenderError, match=r"metadata\.uid"):
        render_operands(no_uid)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openxpu_operator.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_render_prints_the_golden_render(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(yaml.safe_dump({"metadata": {"name": "cluster-policy"}, "spec": {}}))
    r = _cli("render", str(f), "--uid", UID, *(a for n in NODES for a in ("--node", n)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == (GOLDEN / "defaults.yaml").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("spec: {driver: {version: latest}}", "spec.driver.version: must be a version"),
        ("spec: [", "not valid YAML"),
        ("- a list", "not an XPUClusterPolicy object"),
    ],
)
def test_cli_render_refuses_bad_input_in_one_line(
    tmp_path: Path, content: str, message: str
) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text(content)
    r = _cli("render", str(f))
    assert r.returncode == 2
    assert r.stdout == ""
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
