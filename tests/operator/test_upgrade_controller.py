"""The driver upgrade as the operator runs it: a real `openxpu-operator run` process under
operator/deploy/rbac.yaml against a real kube-apiserver (envtest). A change of
spec.driver.version walks the nodes one at a time through the upgrade states, evicting
their XPU pods; status.upgrade and the UpgradeInProgress / UpgradeFailed conditions say
where it stands; a driver that crashes fails its node and holds the rollout; rolling the
version back recovers it; deleting the policy gives back the node and its labels.

No controller manager or kubelet runs here, so `Cluster.settle()` plays them: it records the
driver DaemonSet's ControllerRevision (as the DaemonSet controller does), starts a driver
pod of the current revision on each node without one, reports it Ready (or, for a faulty
emulated release, crashed with the exit status and log tail of a real xpud of that version)
and finishes pods that were deleted or evicted (as the kubelet does)."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import needs_etcd
from operator_process import (
    NAMESPACE,
    POLICIES,
    Env,
    Operator,
    environment,
    operator,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from openxpu_operator.upgrade.executor import REVISION_LABEL
from openxpu_operator.upgrade.machine import (
    FAILURE,
    IN_PROGRESS,
    STATE_LABEL,
    State,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), needs_etcd]

NODES = ("upg-a", "upg-b", "upg-c")
TEAM = "team"
DS = f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets"
REVISIONS = f"/apis/apps/v1/namespaces/{NAMESPACE}/controllerrevisions"
BAD_VERSION = "0.3.0-faulty"
IN_PROGRESS_NAMES = {s.value for s in IN_PROGRESS}


@functools.cache
def faulty_driver_exit() -> tuple[int, str]:
    """What the kubelet reports of a driver container of BAD_VERSION: the exit status of a
    real xpud of that version and its log (FallbackToLogsOnError), installer line first."""
    with tempfile.TemporaryDirectory(prefix="xpu-", dir="/tmp") as root:
        ran = subprocess.run(
            [
                sys.executable,
                "-m",
                "openxpu_runtime.daemon.main",
                "--root",
                root,
                "--driver-version",
                BAD_VERSION,
                "--device-nodes=none",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    installer = f"xpu-driver: {BAD_VERSION} installed; running xpud in the foreground\n"
    return ran.returncode, installer + ran.stderr


class Cluster:
    """What the DaemonSet controller and the kubelets would do, one call at a time."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.http = env.http

    def driver_ds(self) -> dict[str, Any] | None:
        found = self.env.items(DS, "app.kubernetes.io/component=driver")
        return found[0] if found else None

    def _revision(self, ds: dict[str, Any]) -> str:
        """The ControllerRevision of the DaemonSet's template: made, or made newest again
        (a rollback), as the DaemonSet controller does."""
        template = json.dumps(ds["spec"]["template"], sort_keys=True)
        hash_ = hashlib.sha256(template.encode()).hexdigest()[:10]
        owned = [
            r
            for r in self.env.items(REVISIONS)
            if any(o["uid"] == ds["metadata"]["uid"] for o in r["metadata"]["ownerReferences"])
        ]
        newest = max((r["revision"] for r in owned), default=0)
        mine = next((r for r in owned if r["metadata"]["labels"][REVISION_LABEL] == hash_), None)
        if mine is None:
            owner = {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": ds["metadata"]["name"],
                "uid": ds["metadata"]["uid"],
                "controller": True,
            }
            body = {
                "metadata": {
                    "name": f"{ds['metadata']['name']}-{hash_}",
                    "labels": {REVISION_LABEL: hash_},
                    "ownerReferences": [owner],
                },
                "revision": newest + 1,
                "data": {},
            }
            assert self.http.post(REVISIONS, json=body).status_code == 201
        elif mine["revision"] < newest:
            path = f"{REVISIONS}/{mine['metadata']['name']}"
            patch = {"revision": newest + 1}
            r = self.http.patch(
                path, json=patch, headers={"Content-Type": "application/merge-patch+json"}
            )
            assert r.status_code == 200, r.text
        return hash_

    def _finish_terminating(self) -> None:
        for pod in self.env.items("/api/v1/pods"):
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                self.http.delete(
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    params={"gracePeriodSeconds": "0"},
                )

    def pod(
        self,
        namespace: str,
        body: dict[str, Any],
        *,
        crashed: tuple[int, str] | None = None,
    ) -> None:
        r = self.http.post(f"/api/v1/namespaces/{namespace}/pods", json=body)
        assert r.status_code == 201, r.text
        name = body["metadata"]["name"]
        container = body["spec"]["containers"][0]
        ready = crashed is None
        container_status: dict[str, Any] = {
            "name": container["name"],
            "image": container["image"],
            "imageID": "",
            "ready": ready,
            "restartCount": 0 if ready else 1,
            "state": {"running": {}} if ready else {"waiting": {"reason": "CrashLoopBackOff"}},
        }
        if crashed is not None:
            code, log = crashed
            ended = {"exitCode": code, "reason": "Error", "message": log}
            container_status["lastState"] = {"terminated": ended}
        status = {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [container_status],
        }
        r = self.http.patch(
            f"/api/v1/namespaces/{namespace}/pods/{name}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status_code == 200, r.text

    def settle(self) -> None:
        """One round of the missing controllers."""
        self._finish_terminating()
        ds = self.driver_ds()
        if ds is None:
            return
        hash_ = self._revision(ds)
        template = ds["spec"]["template"]
        selector = template["spec"].get("nodeSelector") or {}
        version = template["metadata"]["annotations"]["openxpu.io/driver-version"]
        drivers = {
            p["spec"]["nodeName"]
            for p in self.env.items(
                f"/api/v1/namespaces/{NAMESPACE}/pods", "app.kubernetes.io/component=driver"
            )
        }
        for name in NODES:
            labels = self.env.node_labels(name)
            if name in drivers or any(labels.get(k) != v for k, v in selector.items()):
                continue
            spec = {
                **template["spec"],
                "nodeName": name,
                "automountServiceAccountToken": False,
            }
            meta = template["metadata"]
            body = {
                "metadata": {
                    "name": f"{ds['metadata']['name']}-{name}-{uuid.uuid4().hex[:5]}",
                    "labels": {**meta.get("labels", {}), REVISION_LABEL: hash_},
                    "annotations": meta.get("annotations", {}),
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "DaemonSet",
                            "name": ds["metadata"]["name"],
                            "uid": ds["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": spec,
            }
            crashed = faulty_driver_exit() if version == BAD_VERSION else None
            self.pod(NAMESPACE, body, crashed=crashed)

    def workload(self, node: str) -> str:
        """An XPU pod of a ReplicaSet on `node` (the owner need not exist: no GC here)."""
        name = f"burn-{node}"
        owner = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "burn",
            "uid": str(uuid.uuid4()),
            "controller": True,
        }
        container = {
            "name": "burn",
            "image": "openxpu/openxpu:dev",
            "resources": {"limits": {"openxpu.io/xpu": "1"}},
        }
        body = {
            "metadata": {"name": name, "ownerReferences": [owner]},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": False,
                "containers": [container],
            },
        }
        self.pod(TEAM, body)
        return name


def _states(env: Env) -> dict[str, str]:
    return {n: env.node_labels(n).get(STATE_LABEL, "") for n in NODES}


def _upgrade(env: Env) -> dict[str, Any]:
    status: dict[str, Any] = (env.policy("upg") or {}).get("status") or {}
    return status.get("upgrade") or {}


def _counts(env: Env) -> dict[str, int] | None:
    """status.upgrade.counts without the zeros; None before the first pass wrote it."""
    counts = _upgrade(env).get("counts")
    return None if counts is None else {k: v for k, v in counts.items() if v}


UPGRADE_GAUGES = ("pending", "in_progress", "done", "failed")


def _upgrade_metrics(op: Operator) -> dict[str, float]:
    """The operator's driver upgrade gauges as /metrics serves them: the node counts by
    `pending`/`in_progress`/`done`/`failed`, `auto` and each `state=...`."""
    text = httpx.get(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).text
    got = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "openxpu_operator_driver_upgrade_nodes":
                got[f"state={sample.labels['state']}"] = sample.value
            elif sample.name == "openxpu_operator_driver_auto_upgrade_enabled":
                got["auto"] = sample.value
            elif sample.name.startswith("openxpu_operator_driver_upgrades_"):
                got[sample.name.removeprefix("openxpu_operator_driver_upgrades_")] = sample.value
    return got


def _gauges(op: Operator, **want: float) -> bool:
    got = _upgrade_metrics(op)
    return all(got.get(k) == v for k, v in want.items())


def _set_version(env: Env, version: str) -> None:
    r = env.http.patch(
        f"{POLICIES}/upg",
        json={"spec": {"driver": {"version": version}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text


def _roll(env: Env, cluster: Cluster, until: Any, what: str, timeout: float = 180) -> list[Any]:
    """Play the controllers until `until(states)`; every distinct state map seen."""
    seen: list[dict[str, str]] = []

    def step() -> bool:
        cluster.settle()
        states = _states(env)
        if not seen or seen[-1] != states:
            seen.append(states)
        return bool(until(states))

    try:
        wait_until(what, step, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last states {seen[-3:]}, {_upgrade(env)}") from None
    return seen


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with environment() as e:
        e.http.post("/api/v1/namespaces", json={"metadata": {"name": TEAM}})
        e.http.post(
            f"/api/v1/namespaces/{TEAM}/serviceaccounts", json={"metadata": {"name": "default"}}
        )
        for name in NODES:
            e.create_node(name, {"kubernetes.io/hostname": name})
        yield e


def test_a_version_change_walks_the_nodes_one_at_a_time(env: Env, tmp_path: Path) -> None:
    cluster = Cluster(env)
    spec = {"driver": {"upgradePolicy": {"maxParallelUpgrades": 1, "maxUnavailable": 1}}}
    with operator(env, tmp_path) as op:
        env.create_policy("upg", spec)
        wait_until("the driver DaemonSet", cluster.driver_ds)
        _roll(env, cluster, lambda s: _counts(env) == {}, "a first pass")
        progress = env.condition("upg", "UpgradeInProgress")
        assert (progress["status"], progress["reason"]) == ("False", "DriverUpToDate")
        assert set(_states(env).values()) == {""}
        # No node labelled yet: every upgrade gauge is there, at 0; autoUpgrade on.
        gauges = wait_until(
            "the upgrade gauges", lambda: (g := _upgrade_metrics(op)).get("auto") == 1 and g
        )
        assert {k: gauges[k] for k in UPGRADE_GAUGES} == dict.fromkeys(UPGRADE_GAUGES, 0)
        workloads = {node: cluster.workload(node) for node in NODES}

        _set_version(env, "0.2.0")
        reasons: set[tuple[str, str]] = set()

        in_progress: set[float] = set()

        def done(states: dict[str, str]) -> bool:
            if (c := env.condition("upg", "UpgradeInProgress")).get("status") == "True":
                reasons.add((c["reason"], c["message"]))
            in_progress.add(_upgrade_metrics(op)["in_progress"])
            return set(states.values()) == {State.UPGRADE_DONE.value}

        seen = _roll(env, cluster, done, "every node upgrade-done")
        # One node at a time: never two between cordon and uncordon.
        assert all(sum(s in IN_PROGRESS_NAMES for s in m.values()) <= 1 for m in seen), seen
        for node in NODES:
            walked = [m[node] for m in seen]
            assert State.POD_DELETION_REQUIRED.value in walked, (node, walked)
            assert State.POD_RESTART_REQUIRED.value in walked, (node, walked)
            # Its XPU pod left through the Eviction API (the RBAC allows it) and the
            # node is schedulable again.
            gone = env.get(f"/api/v1/namespaces/{TEAM}/pods/{workloads[node]}")
            assert gone is None, node
            assert not env.get(f"/api/v1/nodes/{node}")["spec"].get("unschedulable")
        # The condition named the node and what it waited for while the walk went on.
        assert any(
            r == "NodesUpgrading" and f"{n} (pod-" in m for r, m in reasons for n in NODES
        ), reasons
        wait_until(
            "status.upgrade: three done",
            lambda: _counts(env) == {"upgrade-done": 3},
        )
        assert _upgrade(env)["nodes"] == []
        assert env.condition("upg", "UpgradeInProgress")["status"] == "False"
        assert 1 in in_progress and in_progress <= {0, 1}, in_progress
        wait_until("the gauges: three done", lambda: _gauges(op, done=3, in_progress=0))

        # A driver that fails its self-test: the first node fails at its first exit, with
        # xpud's words; the rollout takes no other.
        _set_version(env, BAD_VERSION)
        failed = _roll(
            env,
            cluster,
            lambda s: State.UPGRADE_FAILED.value in s.values(),
            "a node upgrade-failed",
        )[-1]
        bad = next(n for n, s in failed.items() if s == State.UPGRADE_FAILED.value)
        others = set(NODES) - {bad}
        condition = wait_until(
            "UpgradeFailed=True",
            lambda: (c := env.condition("upg", "UpgradeFailed")).get("status") == "True" and c,
        )
        assert condition["reason"] == "NodeUpgradeFailed" and bad in condition["message"]
        said = f"failed its start-up self-test (exit 3): xpud: driver {BAD_VERSION} failed"
        assert said in condition["message"], condition
        node = env.get(f"/api/v1/nodes/{bad}")
        assert said in node["metadata"]["annotations"][FAILURE]
        (reported,) = [n for n in _upgrade(env)["nodes"] if n["state"] == "upgrade-failed"]
        assert reported["name"] == bad and said in reported["reason"]
        # The passes after the failure hold the rollout: no other node starts.
        held = wait_until("the rollout held", lambda: _upgrade(env).get("held"))
        assert bad in held
        cluster.settle()
        assert {_states(env)[n] for n in others} == {State.UPGRADE_REQUIRED.value}
        wait_until(
            "the gauges: one failed, two pending",
            lambda: _gauges(op, failed=1, pending=2, in_progress=0, done=0),
        )
        assert _upgrade_metrics(op)["state=upgrade-failed"] == 1
        progress = env.condition("upg", "UpgradeInProgress")
        assert (progress["status"], progress["reason"]) == ("True", "RolloutHeld")

        # Rolled back: the failed node walks again and every node ends done.
        _set_version(env, "0.2.0")
        _roll(
            env,
            cluster,
            lambda s: set(s.values()) == {State.UPGRADE_DONE.value},
            "all done after the rollback",
        )
        wait_until(
            "UpgradeFailed=False",
            lambda: env.condition("upg", "UpgradeFailed").get("status") == "False",
        )
        wait_until("the gauges: three done again", lambda: _gauges(op, done=3, failed=0))

        # Deleted mid-upgrade (a node failed and cordoned by us): the uninstall gives the
        # node back and removes the upgrade's label and annotations.
        _set_version(env, BAD_VERSION)
        _roll(env, cluster, lambda s: State.UPGRADE_FAILED.value in s.values(), "failed again")
        bad = next(n for n, s in _states(env).items() if s == State.UPGRADE_FAILED.value)
        assert env.get(f"/api/v1/nodes/{bad}")["spec"]["unschedulable"] is True
        env.delete_policy_and_wait("upg")
        for name in NODES:
            node = env.get(f"/api/v1/nodes/{name}")
            assert STATE_LABEL not in node["metadata"].get("labels", {}), name
            notes = node["metadata"].get("annotations") or {}
            assert not [k for k in notes if k.startswith("openxpu.io/driver-upgrade")], notes
            assert not node["spec"].get("unschedulable"), name
        gauges = _upgrade_metrics(op)
        assert {k: gauges[k] for k in (*UPGRADE_GAUGES, "auto")} == dict.fromkeys(
            (*UPGRADE_GAUGES, "auto"), 0
        ), "the policy gone, no upgrade is left to count"
