"""Status computation (pure): from rendered operands, the objects and pods the API server
holds and the XPU nodes to per-operand status, conditions, node summary and the roll-up."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from openxpu_operator import status as status_module
from openxpu_operator.policy import ConditionStatus, PolicyState, load_policy
from openxpu_operator.render import RenderContext, render_operands
from openxpu_operator.status import (
    BARRIER_NOT_REACHED,
    CONFLICTING_POLICY,
    CRD_OUTDATED,
    IMAGE_PULL,
    NO_XPU_NODES,
    OPERAND_NOT_READY,
    RECONCILED,
    UNSCHEDULABLE,
    VALIDATION_FAILED,
    Observation,
    compute_status,
    special_status,
    status_body,
)

pytestmark = pytest.mark.unit

NODE = "xpu-1"
T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def _operands(spec: dict[str, Any] | None = None, nodes: tuple[str, ...] = (NODE,)) -> Any:
    policy = load_policy(
        {"metadata": {"name": "p", "uid": "u-1", "generation": 3}, "spec": spec or {}}
    )
    return render_operands(policy, RenderContext(nodes=nodes))


def _healthy(operands: Any) -> tuple[dict[tuple[str, str], Any], list[dict[str, Any]]]:
    """What a healthy one-node cluster holds: ready DaemonSets, complete Jobs, ready pods."""
    objects: dict[tuple[str, str], Any] = {}
    pods = []
    for operand in operands:
        for obj in operand.objects:
            live = copy.deepcopy(obj)
            live["metadata"]["generation"] = 1
            if obj["kind"] == "DaemonSet":
                live["status"] = {
                    "observedGeneration": 1,
                    "desiredNumberScheduled": 1,
                    "numberReady": 1,
                    "updatedNumberScheduled": 1,
                }
                pods.append(_pod(operand.name, f"{obj['metadata']['name']}-abc"))
            if obj["kind"] == "Job":
                live["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
                pods.append(_pod(operand.name, f"{obj['metadata']['name']}-x", phase="Succeeded"))
            objects[(obj["kind"], obj["metadata"]["name"])] = live
    return objects, pods


def _pod(component: str, name: str, phase: str = "Running", **status: Any) -> dict[str, Any]:
    ready = "True" if phase == "Running" and not status else "False"
    return {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": component}},
        "spec": {"nodeName": NODE, "containers": [{"name": "main"}]},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": ready}],
            **status,
        },
    }


def _observe(**changes: Any) -> Observation:
    operands = changes.pop("operands", None) or _operands()
    objects, pods = _healthy(operands)
    base: dict[str, Any] = {
        "generation": 3,
        "operands": operands,
        "objects": objects,
        "pods": pods,
        "xpu_nodes": {NODE: "x1-2"},
        "now": T1,
    }
    return Observation(**{**base, **changes})


def _conditions(obs: Observation) -> dict[str, Any]:
    return {c.type: c for c in compute_status(obs).conditions}


def test_everything_ready_is_ready_reconciled() -> None:
    status = compute_status(_observe())
    assert status.state is PolicyState.READY
    ready = _conditions(_observe())["Ready"]
    assert (ready.status, ready.reason) == (ConditionStatus.TRUE, RECONCILED)
    assert status.operands_ready == "7/7" and status.nodes_ready == "1/1"
    assert status.observed_generation == 3
    assert all(c.observed_generation == 3 for c in status.conditions)
    types = [c.type for c in status.conditions]
    assert types == [
        "Ready",
        "Error",
        "DriverReady",
        "CDIReady",
        "DriverValidationReady",
        "DevicePluginReady",
        "FeatureDiscoveryReady",
        "ExporterReady",
        "WorkloadValidationReady",
    ]


def test_no_xpu_nodes_is_not_ready() -> None:
    obs = _observe(xpu_nodes={}, operands=_operands(nodes=()))
    status = compute_status(obs)
    assert status.state is PolicyState.NOT_READY
    assert _conditions(obs)["Ready"].reason == NO_XPU_NODES
    assert status.nodes_ready == "0/0"


def _with_pod(component: str, pod: dict[str, Any]) -> Observation:
    obs = _observe()
    pods = [
        p for p in obs.pods if p["metadata"]["labels"]["app.kubernetes.io/component"] != component
    ]
    return _observe(pods=[*pods, pod])


def test_a_pending_pod_names_the_schedulers_message_node_and_operand() -> None:
    message = "0/1 nodes are available: 1 Insufficient memory."
    pod = _pod(
        "device-plugin",
        "openxpu-device-plugin-q",
        phase="Pending",
        conditions=[{"type": "PodScheduled", "status": "False", "message": message}],
    )
    obs = _with_pod("device-plugin", pod)
    status = compute_status(obs)
    plugin = next(o for o in status.operands if o.name == "device-plugin")
    assert plugin.reason == UNSCHEDULABLE and message in plugin.message
    assert "openxpu-device-plugin-q" in plugin.message
    cond = _conditions(obs)
    assert cond["DevicePluginReady"].status is ConditionStatus.FALSE
    assert cond["Ready"].reason == OPERAND_NOT_READY
    assert cond["Ready"].message.startswith("device-plugin: Unschedulable")
    assert status.nodes.not_ready[0].name == NODE
    assert status.nodes.not_ready[0].reason == UNSCHEDULABLE


def test_an_image_pull_error_is_named_with_the_runtimes_message() -> None:
    waiting = {"reason": "ErrImagePull", "message": 'pull "openxpu/missing:1" failed: not found'}
    pod = _pod(
        "driver",
        "openxpu-driver-x1-2-z",
        phase="Pending",
        containerStatuses=[{"name": "driver", "ready": False, "state": {"waiting": waiting}}],
    )
    obs = _with_pod("driver", pod)
    driver = compute_status(obs).operands[0]
    assert driver.reason == IMAGE_PULL and "openxpu/missing:1" in driver.message


def test_a_barrier_not_reached_names_the_barrier_file() -> None:
    pod = _pod(
        "device-plugin",
        "openxpu-device-plugin-b",
        phase="Pending",
        initContainerStatuses=[
            {"name": "wait-for-driver", "ready": False, "state": {"running": {}}}
        ],
    )
    obs = _with_pod("device-plugin", pod)
    plugin = next(o for o in compute_status(obs).operands if o.name == "device-plugin")
    assert plugin.reason == BARRIER_NOT_REACHED
    assert "/run/openxpu/validations/driver-ready" in plugin.message
    assert NODE in plugin.message


def test_a_failed_validator_carries_its_log_tail() -> None:
    obs = _observe()
    job = next(k for k in obs.objects if k[0] == "Job")
    objects = dict(obs.objects)
    objects[job] = {
        **objects[job],
        "status": {"conditions": [{"type": "Failed", "status": "True"}]},
    }
    pods = [
        p
        for p in obs.pods
        if p["metadata"]["labels"]["app.kubernetes.io/component"] != "workload-validation"
    ]
    failed = _pod("workload-validation", f"{job[1]}-f", phase="Failed")
    obs = _observe(
        objects=objects, pods=[*pods, failed], log_tails={f"{job[1]}-f": "vectoradd: mismatch at 7"}
    )
    status = compute_status(obs)
    workload = status.operands[-1]
    assert workload.reason == VALIDATION_FAILED
    assert "vectoradd: mismatch at 7" in workload.message and NODE in workload.message
    assert status.nodes.not_ready[0].reason == VALIDATION_FAILED


def test_an_outdated_crd_is_not_ready_and_an_error() -> None:
    obs = _observe(crd_missing=["spec.exporter.dcgmCompat"])
    cond = _conditions(obs)
    assert (
        cond["Ready"].reason == CRD_OUTDATED and "spec.exporter.dcgmCompat" in cond["Ready"].message
    )
    assert (cond["Error"].status, cond["Error"].reason) == (ConditionStatus.TRUE, CRD_OUTDATED)
    assert compute_status(obs).state is PolicyState.NOT_READY


def test_a_disabled_operand_has_no_condition_and_does_not_count() -> None:
    operands = _operands({"exporter": {"enabled": False}})
    status = compute_status(_observe(operands=operands))
    assert status.state is PolicyState.READY
    assert status.operands_ready == "6/6"
    exporter = next(o for o in status.operands if o.name == "exporter")
    assert not exporter.enabled
    assert "ExporterReady" not in {c.type for c in status.conditions}


def test_a_daemonset_not_yet_rolled_out_is_not_ready() -> None:
    obs = _observe()
    ds = next(k for k in obs.objects if k[0] == "DaemonSet")
    objects = dict(obs.objects)
    objects[ds] = {**objects[ds], "status": {}}
    first = compute_status(_observe(objects=objects)).operands[0]
    assert first.reason == "RollingOut" and "not rolled it out" in first.message


def test_an_admins_false_keeps_a_node_ready_without_that_operand() -> None:
    obs = _observe()
    pods = [
        p for p in obs.pods if p["metadata"]["labels"]["app.kubernetes.io/component"] != "exporter"
    ]
    assert compute_status(_observe(pods=pods)).nodes.ready == 0
    status = compute_status(_observe(pods=pods, admin_disabled={NODE: {"exporter"}}))
    assert status.nodes.ready == 1


def test_last_transition_time_moves_only_with_the_status() -> None:
    before = status_body(compute_status(_observe(now=T0)))["conditions"]
    same = compute_status(_observe(now=T1, previous=before))
    assert {c.last_transition_time for c in same.conditions} == {T0}
    flipped = compute_status(_observe(now=T1, previous=before, xpu_nodes={}))
    ready = next(c for c in flipped.conditions if c.type == "Ready")
    assert ready.last_transition_time == T1


def test_a_later_policy_is_ignored_naming_the_active_one() -> None:
    status = special_status(
        1, CONFLICTING_POLICY, "policy 'first' is active", [], T0, active="first"
    )
    assert status.state is PolicyState.IGNORED and status.active_policy == "first"
    conflict = next(c for c in status.conditions if c.type == CONFLICTING_POLICY)
    assert conflict.status is ConditionStatus.TRUE and "'first'" in conflict.message


def test_every_status_reason_is_explained_in_the_docs() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "operator.md").read_text()
    reasons = {
        value
        for name, value in vars(status_module).items()
        if name.isupper() and isinstance(value, str) and value.isalpha() and value[0].isupper()
    }
    assert {"Reconciled", "InvalidSpec", "BarrierNotReached"} <= reasons
    missing = sorted(r for r in reasons if f"| `{r}` |" not in doc)
    assert not missing, f"docs/operator.md has no row for the reasons {missing}"
