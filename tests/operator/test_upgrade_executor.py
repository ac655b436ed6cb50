"""The driver upgrade executor against a real kube-apiserver (envtest: no kubelet, no
controllers). The test plays the missing parts by hand: it creates the Node objects, the
driver DaemonSet's ControllerRevisions (what the DaemonSet controller would), and it
finishes pods the executor evicted or deleted (what the kubelet would)."""

from __future__ import annotations

import itertools
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import Cluster, needs_etcd

from openxpu_lab.envtest import ApiServer
from openxpu_operator.kube import Kube
from openxpu_operator.nodes import PRESENT_LABEL
from openxpu_operator.policy import UpgradePolicySpec
from openxpu_operator.upgrade.executor import REVISION_LABEL, reconcile_upgrades
from openxpu_operator.upgrade.machine import (
    FAILURE,
    INITIAL_UNSCHEDULABLE,
    LAST_ERROR,
    SKIP_LABEL,
    STATE_ENTERED_AT,
    STATE_LABEL,
    State,
    stamp,
)

pytestmark = [pytest.mark.integration, needs_etcd]

S = State
NOW = 1_800_000_000.0
DRIVER_NODE_LABEL = "openxpu.io/xpu.deploy.driver"
_serial = itertools.count()


class Lab:
    """One test's corner of the shared API server: its own namespaces and node names."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        tag = f"{next(_serial)}-{uuid.uuid4().hex[:6]}"
        self.ns = f"openxpu-{tag}"
        self.team = f"team-{tag}"
        self.tag = tag
        self.ds: dict[str, Any] = {}
        self.events_on: dict[str, Any] | None = None

    def node_name(self, name: str) -> str:
        return f"{name}-{self.tag}"

    async def setup(self) -> None:
        for ns in (self.ns, self.team):
            await self.kube.ensure_namespace(ns)
            await self.kube.create(
                f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "default"}}
            )
        self.ds = await self._create(
            f"/apis/apps/v1/namespaces/{self.ns}/daemonsets",
            {
                "metadata": {
                    "name": "openxpu-driver",
                    "labels": {"app.kubernetes.io/component": "driver"},
                },
                "spec": {
                    "selector": {"matchLabels": {"app.kubernetes.io/name": "openxpu-driver"}},
                    "updateStrategy": {"type": "OnDelete"},
                    "template": {
                        "metadata": {"labels": {"app.kubernetes.io/name": "openxpu-driver"}},
                        "spec": {
                            "nodeSelector": {DRIVER_NODE_LABEL: self.tag},
                            "containers": [{"name": "driver", "image": "openxpu/openxpu:dev"}],
                        },
                    },
                },
            },
        )
        await self.revision(1, "old")

    async def _create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        created = await self.kube.create(path, body)
        assert created is not None, f"{path} exists already"
        return created

    def _owner(self) -> list[dict[str, Any]]:
        meta = self.ds["metadata"]
        return [
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
            }
        ]

    async def revision(self, number: int, hash_: str) -> None:
        """A new template revision, as the DaemonSet controller records it."""
        await self._create(
            f"/apis/apps/v1/namespaces/{self.ns}/controllerrevisions",
            {
                "metadata": {
                    "name": f"openxpu-driver-{hash_}",
                    "labels": {REVISION_LABEL: hash_},
                    "ownerReferences": self._owner(),
                },
                "revision": number,
                "data": {},
            },
        )

    async def node(self, name: str, *, unschedulable: bool = False, **labels: str) -> str:
        full = self.node_name(name)
        await self._create(
            "/api/v1/nodes",
            {
                "metadata": {
                    "name": full,
                    "labels": {PRESENT_LABEL: "true", DRIVER_NODE_LABEL: self.tag, **labels},
                },
                "spec": {"unschedulable": unschedulable},
            },
        )
        return full

    async def pod(
        self,
        ns: str,
        name: str,
        node: str,
        *,
        labels: dict[str, str] | None = None,
        owner: list[dict[str, Any]] | None = None,
        xpu: bool = False,
        ready: bool = False,
        containers: list[dict[str, Any]] | None = None,
    ) -> None:
        resources = {"limits": {"openxpu.io/xpu": "1"}} if xpu else {}
        containers = containers or [{"name": "c", "image": "busybox", "resources": resources}]
        await self._create(
            f"/api/v1/namespaces/{ns}/pods",
            {
                "metadata": {"name": name, "labels": labels or {}, "ownerReferences": owner or []},
                "spec": {
                    "nodeName": node,
                    "automountServiceAccountToken": False,
                    "containers": containers,
                },
            },
        )
        # Running, as the kubelet would report it: a Pending pod bypasses PDBs on eviction.
        conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
        await self.kube.merge_patch(
            f"/api/v1/namespaces/{ns}/pods/{name}/status",
            {"status": {"phase": "Running", "conditions": conditions}},
        )

    async def driver_pod(
        self, node: str, hash_: str, *, ready: bool = True, as_template: bool = False
    ) -> str:
        """A driver pod of revision `hash_`; `as_template`: running what the DaemonSet's
        template runs now (else something older)."""
        name = f"openxpu-driver-{node}-{hash_}"
        template = self.ds["spec"]["template"]["spec"]["containers"]
        await self.pod(
            self.ns,
            name,
            node,
            labels={"app.kubernetes.io/name": "openxpu-driver", REVISION_LABEL: hash_},
            owner=self._owner(),
            ready=ready,
            containers=template if as_template else None,
        )
        return name

    async def workload(self, name: str, node: str, **labels: str) -> None:
        """An XPU pod of a ReplicaSet (the owner object need not exist: no GC runs here)."""
        owner = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "burn",
                "uid": str(uuid.uuid4()),
                "controller": True,
            }
        ]
        await self.pod(self.team, name, node, labels=labels, owner=owner, xpu=True)

    async def get_node(self, name: str) -> dict[str, Any]:
        node = await self.kube.get(f"/api/v1/nodes/{name}")
        assert node is not None
        return node

    async def state(self, name: str) -> str | None:
        labels: dict[str, str] = (await self.get_node(name))["metadata"].get("labels") or {}
        return labels.get(STATE_LABEL)

    async def pods(self, ns: str) -> list[dict[str, Any]]:
        return await self.kube.list_items(f"/api/v1/namespaces/{ns}/pods")

    async def kubelet_finishes_terminating_pods(self) -> list[str]:
        """Remove pods marked for deletion, as a kubelet does once their containers stop."""
        gone = []
        for ns in (self.ns, self.team):
            for pod in await self.pods(ns):
                if pod["metadata"].get("deletionTimestamp"):
                    name = pod["metadata"]["name"]
                    await self.kube.delete(f"/api/v1/namespaces/{ns}/pods/{name}", force=True)
                    gone.append(name)
        return gone

    async def step(self, spec: UpgradePolicySpec, now: float = NOW) -> dict[str, Any]:
        status = await reconcile_upgrades(self.kube, spec, self.ns, now, events_on=self.events_on)
        return status.as_status()


@pytest.fixture
async def lab(apiserver: ApiServer) -> AsyncIterator[Lab]:
    tls = ssl.create_default_context(cafile=str(apiserver.ca_cert))
    tls.load_cert_chain(str(apiserver.client_cert), str(apiserver.client_key))
    async with httpx.AsyncClient(base_url=apiserver.url, verify=tls, timeout=30) as http:
        kube = Kube(http)
        lab = Lab(kube)
        await lab.setup()
        yield lab
        # Other tests share this API server: take our nodes and policy out of it.
        if lab.events_on is not None:
            await kube.delete(
                f"/apis/openxpu.io/v1/xpuclusterpolicies/{lab.events_on['metadata']['name']}"
            )
        for node in await kube.list_items("/api/v1/nodes", f"{DRIVER_NODE_LABEL}={lab.tag}"):
            await kube.delete(f"/api/v1/nodes/{node['metadata']['name']}")


def policy(**data: Any) -> UpgradePolicySpec:
    return UpgradePolicySpec.model_validate({"maxUnavailable": "100%", **data})


async def test_a_node_walks_from_upgrade_required_to_done_cordoned_evicted_and_restarted(
    lab: Lab, cluster: Cluster
) -> None:
    r = cluster.policy(f"upgrade-{lab.tag}", {})
    assert r.status_code == 201, r.text
    lab.events_on = r.json()
    node = await lab.node("a")
    old_driver = await lab.driver_pod(node, "old")
    await lab.workload("burn", node)
    await lab.pod(lab.team, "web", node)  # no XPU: stays through the upgrade
    spec = policy()

    # Nothing changed yet: nothing happens.
    status = await lab.step(spec)
    assert await lab.state(node) is None and status["nodes"] == {}

    await lab.revision(2, "new")  # driver.version changed: the DaemonSet has a new revision
    await lab.step(spec)
    assert await lab.state(node) == S.UPGRADE_REQUIRED
    await lab.step(spec)
    assert await lab.state(node) == S.CORDON_REQUIRED
    await lab.step(spec, NOW + 1)
    got = await lab.get_node(node)
    assert got["spec"]["unschedulable"] is True
    assert got["metadata"]["annotations"][INITIAL_UNSCHEDULABLE] == "false"
    assert got["metadata"]["annotations"][STATE_ENTERED_AT] == stamp(NOW + 1)
    assert await lab.state(node) == S.WAIT_FOR_JOBS_REQUIRED
    await lab.step(spec)
    assert await lab.state(node) == S.POD_DELETION_REQUIRED

    # The XPU pod is evicted (marked for deletion), the other one left alone.
    status = await lab.step(spec)
    assert await lab.state(node) == S.POD_DELETION_REQUIRED
    assert "team" in status["nodes"][node]["reason"]
    assert await lab.kubelet_finishes_terminating_pods() == ["burn"]
    assert [p["metadata"]["name"] for p in await lab.pods(lab.team)] == ["web"]
    await lab.step(spec)
    assert await lab.state(node) == S.DRAIN_REQUIRED
    await lab.step(spec)
    assert await lab.state(node) == S.POD_RESTART_REQUIRED

    # The out-of-date driver pod is deleted; the DaemonSet controller would make a new one.
    await lab.step(spec)
    assert await lab.kubelet_finishes_terminating_pods() == [old_driver]
    status = await lab.step(spec)
    assert "waiting for the DaemonSet" in status["nodes"][node]["reason"]
    await lab.driver_pod(node, "new", ready=False)
    await lab.step(spec)
    assert await lab.state(node) == S.VALIDATION_REQUIRED
    await lab.step(spec)
    assert await lab.state(node) == S.VALIDATION_REQUIRED
    new_driver = f"openxpu-driver-{node}-new"
    await lab.kube.merge_patch(
        f"/api/v1/namespaces/{lab.ns}/pods/{new_driver}/status",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
    )
    await lab.step(spec)
    assert await lab.state(node) == S.UNCORDON_REQUIRED
    status = await lab.step(spec)
    got = await lab.get_node(node)
    assert got["metadata"]["labels"][STATE_LABEL] == S.UPGRADE_DONE
    assert not got["spec"].get("unschedulable")
    assert INITIAL_UNSCHEDULABLE not in got["metadata"]["annotations"]
    assert status["counts"] == {S.UPGRADE_DONE: 1}

    # An Event on the policy for every transition, in order, each with its reason.
    messages = await events(lab, "DriverUpgrade")
    walked = [m.split(": ")[1] for m in messages]
    assert walked == [
        "none -> upgrade-required",
        "upgrade-required -> cordon-required",
        "cordon-required -> wait-for-jobs-required",
        "wait-for-jobs-required -> pod-deletion-required",
        "pod-deletion-required -> drain-required",
        "drain-required -> pod-restart-required",
        "pod-restart-required -> validation-required",
        "validation-required -> uncordon-required",
        "uncordon-required -> upgrade-done",
    ]
    assert messages[2].endswith(": cordoned")


async def events(lab: Lab, reason: str) -> list[str]:
    """Messages of the Events with `reason` on this test's policy, oldest first."""
    assert lab.events_on is not None
    uid = lab.events_on["metadata"]["uid"]
    found = [
        e
        for e in await lab.kube.list_items("/api/v1/namespaces/default/events")
        if e["involvedObject"]["uid"] == uid and e["reason"] == reason
    ]
    found.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))  # timestamps: seconds
    return [e["message"] for e in found]


async def walk_to(lab: Lab, spec: UpgradePolicySpec, node: str, target: State) -> None:
    for _ in range(12):
        if await lab.state(node) == target:
            return
        await lab.step(spec)
        await lab.kubelet_finishes_terminating_pods()
    raise AssertionError(f"{node} never reached {target}: {await lab.state(node)}")


async def test_a_node_cordoned_before_the_upgrade_stays_cordoned(lab: Lab) -> None:
    node = await lab.node("pre", unschedulable=True)
    await lab.driver_pod(node, "old")
    await lab.revision(2, "new")
    spec = policy()
    await walk_to(lab, spec, node, S.POD_RESTART_REQUIRED)
    assert (await lab.get_node(node))["metadata"]["annotations"][INITIAL_UNSCHEDULABLE] == "true"
    await lab.step(spec)  # deletes the old driver pod
    assert await lab.kubelet_finishes_terminating_pods()
    await lab.driver_pod(node, "new")
    await walk_to(lab, spec, node, S.UPGRADE_DONE)
    assert (await lab.get_node(node))["spec"]["unschedulable"] is True


async def test_a_node_labelled_skip_is_left_alone(lab: Lab) -> None:
    skipped = await lab.node("skip", **{SKIP_LABEL: "true"})
    other = await lab.node("other")
    driver = await lab.driver_pod(skipped, "old")
    await lab.driver_pod(other, "old")
    await lab.revision(2, "new")
    spec = policy()
    await walk_to(lab, spec, other, S.POD_RESTART_REQUIRED)
    got = await lab.get_node(skipped)
    assert STATE_LABEL not in got["metadata"]["labels"]
    assert not got["spec"].get("unschedulable")
    assert driver in [p["metadata"]["name"] for p in await lab.pods(lab.ns)]


async def test_a_fresh_executor_mid_walk_continues_from_the_labels(
    lab: Lab, apiserver: ApiServer
) -> None:
    node = await lab.node("resume")
    await lab.driver_pod(node, "old")
    await lab.workload("burn", node)
    await lab.revision(2, "new")
    spec = policy()
    await walk_to(lab, spec, node, S.POD_DELETION_REQUIRED)
    # A new operator (another replica, or after SIGKILL): a new client, nothing in memory.
    tls = ssl.create_default_context(cafile=str(apiserver.ca_cert))
    tls.load_cert_chain(str(apiserver.client_cert), str(apiserver.client_key))
    async with httpx.AsyncClient(base_url=apiserver.url, verify=tls, timeout=30) as http:
        lab.kube = Kube(http)
        await walk_to(lab, spec, node, S.POD_RESTART_REQUIRED)
        assert not [p for p in await lab.pods(lab.team)], "the XPU pod was evicted"
        got = await lab.get_node(node)
        assert got["spec"]["unschedulable"] is True
        assert got["metadata"]["annotations"][INITIAL_UNSCHEDULABLE] == "false"


async def test_a_pdb_blocking_eviction_past_the_timeout_fails_the_node_without_forcing(
    lab: Lab, cluster: Cluster
) -> None:
    r = cluster.policy(f"upgrade-{lab.tag}", {})
    assert r.status_code == 201, r.text
    lab.events_on = r.json()
    node = await lab.node("pdb")
    await lab.driver_pod(node, "old")
    await lab.workload("burn", node, app="burn")
    # envtest runs no disruption controller: disruptionsAllowed stays 0, evictions refused.
    await lab.kube.create(
        f"/apis/policy/v1/namespaces/{lab.team}/poddisruptionbudgets",
        {
            "metadata": {"name": "burn"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "burn"}}},
        },
    )
    await lab.revision(2, "new")
    spec = policy(podDeletion={"timeoutSeconds": 700})
    await walk_to(lab, spec, node, S.POD_DELETION_REQUIRED)
    entered = (await lab.get_node(node))["metadata"]["annotations"][STATE_ENTERED_AT]
    assert entered == stamp(NOW)

    status = await lab.step(spec, NOW + 10)
    notes = (await lab.get_node(node))["metadata"]["annotations"]
    assert "disruption budget" in notes[LAST_ERROR], notes
    assert f"{lab.team}/burn" in notes[LAST_ERROR]
    assert await lab.state(node) == S.POD_DELETION_REQUIRED
    status = await lab.step(spec, NOW + 20)
    assert "disruption budget" in status["nodes"][node]["reason"]

    # Waiting past the threshold: one Warning naming the node and what blocks it.
    await lab.step(spec, NOW + 601)
    await lab.step(spec, NOW + 602)
    slow = await events(lab, "DriverUpgradeSlow")
    assert len(slow) == 1 and node in slow[0] and "disruption budget" in slow[0], slow

    status = await lab.step(spec, NOW + 701)
    assert await lab.state(node) == S.UPGRADE_FAILED
    notes = (await lab.get_node(node))["metadata"]["annotations"]
    assert "after 700 s" in notes[FAILURE] and "disruption budget" in notes[FAILURE]
    assert status["nodes"][node]["state"] == S.UPGRADE_FAILED
    # Never forced: the workload pod is still there, not even marked for deletion.
    (burn,) = await lab.pods(lab.team)
    assert not burn["metadata"].get("deletionTimestamp")
    # The node stays cordoned and failed on later passes.
    await lab.step(spec, NOW + 100)
    assert await lab.state(node) == S.UPGRADE_FAILED
    (failed,) = [m for m in await events(lab, "DriverUpgrade") if "upgrade-failed" in m]
    assert "disruption budget" in failed


async def test_a_new_revision_that_changes_only_labels_restarts_nothing(lab: Lab) -> None:
    node = await lab.node("same")
    driver = await lab.driver_pod(node, "old", as_template=True)
    await lab.workload("burn", node)
    await lab.revision(2, "new")  # e.g. daemonsets.labels changed: same containers
    for _ in range(3):
        await lab.step(policy())
    got = await lab.get_node(node)
    assert STATE_LABEL not in got["metadata"]["labels"] and not got["spec"].get("unschedulable")
    (pod,) = [p for p in await lab.pods(lab.ns) if p["metadata"]["name"] == driver]
    assert not pod["metadata"].get("deletionTimestamp")
    assert [p["metadata"]["name"] for p in await lab.pods(lab.team)] == ["burn"]
