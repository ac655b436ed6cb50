"""The operator (a real `openxpu-operator run` process) against a real kube-apiserver: status,
node labels, operand objects with owner references, one active policy, pruning, drift put
back, the uninstall finalizer, leader election, metrics and liveness.

No kubelet or controller manager runs here: Nodes are created by hand, DaemonSets are never
rolled out and pods never run, so the status is honestly notReady, and the cleanup pods
of an uninstall never finish (the finalizer gives up after its timeout and says so)."""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import needs_etcd
from operator_process import (
    CLEANUP_TIMEOUT,
    LEASE_SECONDS,
    NAMESPACE,
    OPERATOR,
    POLICIES,
    Env,
    environment,
    operator,
    wait_until,
)

from openxpu_operator.render import DEPLOY_LABEL_PREFIX, deploy_label

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), needs_etcd]

DS = f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets"
SERVICES = f"/api/v1/namespaces/{NAMESPACE}/services"
PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"
EVENTS = "/api/v1/namespaces/default/events"
MANAGED = "app.kubernetes.io/managed-by=openxpu-operator"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with environment() as e:
        yield e


def _ds_names(env: Env) -> set[str]:
    return {d["metadata"]["name"] for d in env.items(DS, MANAGED)}


def _ours(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k.startswith("openxpu.io/")}


def _events(env: Env, policy: str) -> list[tuple[str, str]]:
    return [
        (e["reason"], e["message"])
        for e in env.items(EVENTS)
        if e["involvedObject"]["name"] == policy
    ]


def test_status_labels_objects_metrics_and_uninstall(env: Env, tmp_path: Path) -> None:
    with operator(env, tmp_path) as op:
        policy = env.create_policy("main", {})
        ready = wait_until(
            "Ready=False NoXPUNodes",
            lambda: (c := env.condition("main", "Ready")).get("reason") == "NoXPUNodes" and c,
        )
        assert ready["status"] == "False" and ready["observedGeneration"] == 1
        assert env.policy("main")["status"]["state"] == "notReady"  # type: ignore[index]
        wait_until("an Event", lambda: "NoXPUNodes" in {r for r, _ in _events(env, "main")})

        env.create_node("xpu-a", {"kubernetes.io/hostname": "xpu-a"})
        wait_until(
            "the new node labelled",
            lambda: env.node_labels("xpu-a").get("openxpu.io/xpu.present") == "true",
        )
        labels = env.node_labels("xpu-a")
        assert labels["openxpu.io/emulation.profile"] == "x1-2"
        deploy = {k for k, v in labels.items() if k.startswith(DEPLOY_LABEL_PREFIX) and v == "true"}
        assert len(deploy) == 7
        ready = wait_until(
            "Ready=False OperandNotReady",
            lambda: (c := env.condition("main", "Ready")).get("reason") == "OperandNotReady" and c,
        )
        assert ready["message"].startswith("driver: RollingOut")
        status = env.policy("main")["status"]  # type: ignore[index]
        assert status["nodes"]["total"] == 1 and status["nodesReady"] == "0/1"
        assert status["operandsReady"] == "0/7"
        assert env.condition("main", "DriverReady")["observedGeneration"] == 1
        uid = policy["metadata"]["uid"]
        objects = env.items(DS, MANAGED)
        assert len(objects) == 6
        for obj in objects:
            owner = obj["metadata"]["ownerReferences"][0]
            assert (owner["uid"], owner["controller"]) == (uid, True)
            managers = {m["manager"] for m in obj["metadata"]["managedFields"]}
            assert managers == {"openxpu-operator"}
        jobs = env.items(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", MANAGED)
        assert [j["metadata"]["annotations"]["openxpu.io/validation-node"] for j in jobs] == [
            "xpu-a"
        ]

        health = httpx.get(f"http://127.0.0.1:{op.liveness_port}/healthz", timeout=5)
        assert health.status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).text
        assert "openxpu_operator_xpu_nodes 1.0" in metrics
        assert 'openxpu_operator_policy_state{policy="main",state="notReady"} 1.0' in metrics
        assert "openxpu_operator_reconcile_duration_seconds_count" in metrics
        assert "openxpu_operator_reconciles_total" in metrics

        # A node leaving leaves the summary.
        env.http.delete("/api/v1/nodes/xpu-a")
        wait_until(
            "the summary without the node",
            lambda: env.policy("main")["status"]["nodes"]["total"] == 0,  # type: ignore[index]
        )
        env.create_node("xpu-a", {"kubernetes.io/hostname": "xpu-a"})
        wait_until(
            "the node back in the summary",
            lambda: env.policy("main")["status"]["nodes"]["total"] == 1,  # type: ignore[index]
        )

        # Uninstall: objects and labels go at once; the cleanup pod never runs here.
        env.http.delete(f"{POLICIES}/main")
        cleanup = wait_until(
            "a cleanup pod", lambda: env.items(PODS, "app.kubernetes.io/component=cleanup")
        )
        pod = cleanup[0]
        assert pod["spec"]["nodeName"] == "xpu-a"
        assert pod["spec"]["containers"][0]["securityContext"]["privileged"] is True
        assert not _ds_names(env)
        assert _ours(env.node_labels("xpu-a")) == {}
        assert env.policy("main") is not None, "the finalizer must wait for the cleanup"
        wait_until(
            "the policy gone after the timeout",
            lambda: env.policy("main") is None,
            CLEANUP_TIMEOUT + 30,
        )
        assert not env.items(PODS, "app.kubernetes.io/component=cleanup")
        incomplete = wait_until(
            "a CleanupIncomplete Event",
            lambda: [m for r, m in _events(env, "main") if r == "CleanupIncomplete"],
        )
        assert "xpu-a" in incomplete[0]


def test_cleanup_that_completes_ends_the_deletion_without_waiting(env: Env, tmp_path: Path) -> None:
    with operator(env, tmp_path):
        env.create_policy("quick", {})
        wait_until(
            "operands applied",
            lambda: env.condition("quick", "Ready").get("reason") == "OperandNotReady",
        )
        env.http.delete(f"{POLICIES}/quick")
        pod = wait_until(
            "a cleanup pod", lambda: env.items(PODS, "app.kubernetes.io/component=cleanup")
        )[0]
        # What the kubelet would report once the pod ran (none runs here).
        name = pod["metadata"]["name"]
        r = env.http.patch(
            f"{PODS}/{name}/status",
            json={"status": {"phase": "Succeeded"}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status_code == 200, r.text
        wait_until("the policy gone", lambda: env.policy("quick") is None, CLEANUP_TIMEOUT - 5)
        assert "CleanupIncomplete" not in {r for r, _ in _events(env, "quick")}


def test_one_active_policy_prune_admin_false_and_drift(env: Env, tmp_path: Path) -> None:
    with operator(env, tmp_path):
        env.create_policy("first", {})
        wait_until(
            "first reconciled",
            lambda: env.condition("first", "Ready").get("reason") == "OperandNotReady",
        )
        env.create_policy("second", {})
        conflict = wait_until(
            "second ignored", lambda: env.condition("second", "ConflictingPolicy")
        )
        assert "'first'" in conflict["message"]
        second = env.policy("second")["status"]  # type: ignore[index]
        assert second["state"] == "ignored" and second["activePolicy"] == "first"

        # An admin keeps the exporter off this node: honoured, never overwritten.
        env.http.patch(
            "/api/v1/nodes/xpu-a",
            json={"metadata": {"labels": {deploy_label("exporter"): "false"}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )

        # Disabling an operand prunes its objects.
        assert "openxpu-exporter" in _ds_names(env)
        env.http.patch(
            f"{POLICIES}/first",
            json={"spec": {"exporter": {"enabled": False}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        wait_until("the exporter pruned", lambda: "openxpu-exporter" not in _ds_names(env))
        assert not [s for s in env.items(SERVICES, MANAGED) if "exporter" in s["metadata"]["name"]]
        wait_until(
            "generation 2 observed",
            lambda: env.policy("first")["status"]["observedGeneration"] == 2,  # type: ignore[index]
        )
        assert env.node_labels("xpu-a")[deploy_label("exporter")] == "false"

        # Drift made by hand is put back; a deleted object comes back.
        path = f"{DS}/openxpu-device-plugin"
        env.http.patch(
            path,
            json={"spec": {"template": {"spec": {"priorityClassName": "hand-made"}}}},
            headers={"Content-Type": "application/merge-patch+json"},
            params={"fieldManager": "someone"},
        )
        env.http.delete(f"{DS}/openxpu-cdi")
        wait_until(
            "drift put back",
            lambda: env.get(path)["spec"]["template"]["spec"]["priorityClassName"] != "hand-made",
        )
        wait_until("the deleted DaemonSet back", lambda: "openxpu-cdi" in _ds_names(env))

        # The active one gone, the second takes over.
        env.delete_policy_and_wait("first", CLEANUP_TIMEOUT + 30)
        wait_until(
            "second active",
            lambda: env.condition("second", "Ready").get("reason") == "OperandNotReady",
        )
        env.delete_policy_and_wait("second", CLEANUP_TIMEOUT + 30)
        assert _ours(env.node_labels("xpu-a")) == {deploy_label("exporter"): "false"}


def test_two_replicas_never_act_at_once(env: Env, tmp_path: Path) -> None:
    with operator(env, tmp_path, "replica-a") as a, operator(env, tmp_path, "replica-b") as b:
        wait_until("a replica leading", lambda: "holding the lease" in a.output() + b.output())
        leader, follower = (a, b) if "holding the lease" in a.output() else (b, a)
        wait_until("the other waiting", lambda: "waiting for the lease" in follower.output())
        env.create_policy("led", {})
        wait_until("reconciled", lambda: env.condition("led", "Ready").get("reason"))
        assert "holding the lease" not in follower.output()
        leader.kill()
        wait_until(
            "the follower taking over",
            lambda: "holding the lease" in follower.output(),
            LEASE_SECONDS * 3,
        )
        env.http.patch(
            f"{POLICIES}/led",
            json={"spec": {"exporter": {"enabled": False}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        wait_until(
            "the new leader acting",
            lambda: env.policy("led")["status"]["observedGeneration"] == 2,  # type: ignore[index]
        )
        env.delete_policy_and_wait("led", CLEANUP_TIMEOUT + 30)


def test_diagnose_explains_and_bundles(env: Env, tmp_path: Path) -> None:
    with operator(env, tmp_path):
        env.create_policy("diag", {})
        wait_until(
            "reconciled", lambda: env.condition("diag", "Ready").get("reason") == "OperandNotReady"
        )
        bundle = tmp_path / "bundle.tar.gz"
        result = subprocess.run(
            [str(OPERATOR), "diagnose", "--bundle", str(bundle)],
            env={**os.environ, "KUBECONFIG": str(env.api.kubeconfig)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        ready = env.condition("diag", "Ready")
        assert "policy diag: state notReady, operands 0/7, XPU nodes ready 0/1" in result.stdout
        assert f"Ready=False OperandNotReady: {ready['message']}" in result.stdout
        assert "node xpu-a not ready: PodMissing" in result.stdout
        with tarfile.open(bundle) as tar:
            names = set(tar.getnames())
            assert {"policies.yaml", "operands.yaml", "pods.yaml", "node-labels.yaml"} <= names
            labels = yaml.safe_load(tar.extractfile("node-labels.yaml").read())  # type: ignore[union-attr]
            operands = list(yaml.safe_load_all(tar.extractfile("operands.yaml").read()))  # type: ignore[union-attr]
        assert labels["xpu-a"]["openxpu.io/xpu.present"] == "true"
        assert "openxpu-driver-x1-2" in {o["metadata"]["name"] for o in operands}
        env.delete_policy_and_wait("diag", CLEANUP_TIMEOUT + 30)


def test_diagnose_without_a_cluster_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("current-context: nowhere\ncontexts: []\n")
    result = subprocess.run(
        [str(OPERATOR), "diagnose", "--bundle", str(tmp_path / "b.tgz")],
        env={**os.environ, "KUBECONFIG": str(bad)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot gather from the cluster")
    assert "Traceback" not in result.stderr


def test_an_outdated_crd_is_reported_not_ready(env: Env, tmp_path: Path) -> None:
    crd_path = (
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/xpuclusterpolicies.openxpu.io"
    )
    field = (
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/exporter"
        "/properties/dcgmCompat"
    )
    original = env.get(crd_path)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    with operator(env, tmp_path):
        env.create_policy("old-crd", {})
        wait_until(
            "reconciled",
            lambda: env.condition("old-crd", "Ready").get("reason") == "OperandNotReady",
        )
        r = env.http.patch(
            crd_path,
            json=[{"op": "remove", "path": field}],
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert r.status_code == 200, r.text
        try:
            ready = wait_until(
                "CRDOutdated",
                lambda: (
                    (c := env.condition("old-crd", "Ready")).get("reason") == "CRDOutdated" and c
                ),
            )
            assert "spec.exporter.dcgmCompat" in ready["message"]
            assert env.condition("old-crd", "Error")["status"] == "True"
        finally:
            restore = [
                {
                    "op": "replace",
                    "path": "/spec/versions/0/schema/openAPIV3Schema",
                    "value": original,
                }
            ]
            env.http.patch(
                crd_path, json=restore, headers={"Content-Type": "application/json-patch+json"}
            )
        wait_until(
            "back to OperandNotReady",
            lambda: env.condition("old-crd", "Ready").get("reason") == "OperandNotReady",
        )
        env.delete_policy_and_wait("old-crd", CLEANUP_TIMEOUT + 30)


# Specs the API server admits (the CRD's schema and CEL cannot see the problem) that the
# operator cannot use, and the field its InvalidSpec status must name.
ADMITTED_BUT_INVALID = [
    # CEL compares tdpWatts with idleWatts only when both are given; the base's idleWatts
    # (x1-8: 60 W) is the runtime's, so only the operator can tell.
    (
        {"emulation": {"profiles": {"hot": {"base": "x1-8", "tdpWatts": 50}}}},
        "spec.emulation.profiles.hot",
    ),
    # Label keys are not checked by CEL (a rule over map keys exceeds the CRD's cost budget).
    ({"operator": {"labels": {"not a key!": "x"}}}, "spec.operator.labels"),
]


def test_a_spec_only_the_operator_can_refuse_is_invalid_spec(env: Env, tmp_path: Path) -> None:
    merge = {"Content-Type": "application/merge-patch+json"}
    with operator(env, tmp_path):
        for generation, (spec, field) in enumerate(ADMITTED_BUT_INVALID, start=1):
            if generation == 1:
                env.create_policy("invalid", spec)
            else:
                r = env.http.put(
                    f"{POLICIES}/invalid",
                    json={**env.policy("invalid"), "spec": spec},  # type: ignore[dict-item]
                )
                assert r.status_code == 200, r.text
            ready = wait_until(
                f"InvalidSpec naming {field}",
                lambda g=generation: (  # type: ignore[misc]
                    (c := env.condition("invalid", "Ready")).get("observedGeneration") == g and c
                ),
            )
            assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
            assert field in ready["message"], ready["message"]
            error = env.condition("invalid", "Error")
            assert (error["status"], error["reason"]) == ("True", "InvalidSpec")
            assert env.policy("invalid")["status"]["state"] == "notReady"  # type: ignore[index]
        wait_until(
            "an InvalidSpec Event", lambda: "InvalidSpec" in {r for r, _ in _events(env, "invalid")}
        )
        assert not _ds_names(env), "an invalid spec installs nothing"

        # Fixed: reconciled again, the error cleared.
        r = env.http.patch(f"{POLICIES}/invalid", json={"spec": {"operator": None}}, headers=merge)
        assert r.status_code == 200, r.text
        wait_until(
            "InvalidSpec cleared",
            lambda: env.condition("invalid", "Error").get("reason") == "NoError",
        )
        assert env.condition("invalid", "Ready")["reason"] != "InvalidSpec"
        env.delete_policy_and_wait("invalid", CLEANUP_TIMEOUT + 30)
