"""Observe the cluster, plan, and apply each node's step through the API server.

One pass (`reconcile_upgrades`) reads everything it needs fresh: XPU nodes, the driver
DaemonSets and their ControllerRevisions (an OnDelete DaemonSet's current revision is its
newest ControllerRevision; a driver pod is current when its controller-revision-hash label
matches), and the pods on each node. Nothing is remembered between passes, so a fresh
instance (another replica, a restarted operator) continues from the node labels.

Pods leave through the Eviction API (policy/v1) so PodDisruptionBudgets hold; a refused
eviction is recorded on the node (LAST_ERROR) and the machine fails the node once its
timeout passes, never forcing.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openxpu_operator.kube import NODES, ApiError, Kube
from openxpu_operator.nodes import PRESENT_LABEL
from openxpu_operator.policy import UpgradePolicySpec
from openxpu_operator.upgrade.machine import (
    LAST_ERROR,
    STATE_LABEL,
    STUCK_REPORTED,
    XPU_RESOURCE,
    DriverPodView,
    NodeView,
    PodView,
    State,
    Step,
)
from openxpu_operator.upgrade.planner import plan

JSON = dict[str, Any]
REVISION_LABEL = "controller-revision-hash"
# Events about the cluster-scoped policy go where the controller puts its own.
EVENTS_NAMESPACE = "default"


def _requests_xpu(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        resources = container.get("resources") or {}
        for kind in ("limits", "requests"):
            if XPU_RESOURCE in (resources.get(kind) or {}):
                return True
    return False


def _controller(obj: Mapping[str, Any]) -> JSON | None:
    for owner in obj["metadata"].get("ownerReferences") or []:
        if owner.get("controller"):
            found: JSON = owner
            return found
    return None


def pod_view(pod: Mapping[str, Any]) -> PodView:
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    owner = _controller(pod)
    return PodView(
        namespace=meta["namespace"],
        name=meta["name"],
        labels=meta.get("labels") or {},
        uses_xpu=_requests_xpu(pod),
        controller_kind=owner["kind"] if owner else None,
        empty_dir=any("emptyDir" in v for v in spec.get("volumes") or []),
        finished=status.get("phase") in ("Succeeded", "Failed"),
        terminating=bool(meta.get("deletionTimestamp")),
    )


# The pod annotations the driver template sets that change what the driver does.
RUN_ANNOTATIONS = ("openxpu.io/driver-version", "openxpu.io/profile-hash")
_RUN_FIELDS = ("name", "image", "command", "args", "env", "envFrom", "volumeMounts")


def runs(template: Mapping[str, Any]) -> str:
    """A fingerprint of what a pod (or a pod template) runs: its containers' images,
    commands, environment and mounts, its volumes and the driver's version annotations;
    not its labels or other annotations, so a change to those restarts no driver."""
    meta, spec = template.get("metadata") or {}, template.get("spec") or {}
    notes = meta.get("annotations") or {}
    shape = {
        "containers": [
            {k: c.get(k) for k in _RUN_FIELDS}
            for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
        ],
        "volumes": spec.get("volumes") or [],
        "annotations": {k: notes.get(k) for k in RUN_ANNOTATIONS},
    }
    return json.dumps(shape, sort_keys=True)


# How much of a driver's last words a failure reason keeps (node annotation, status).
LAST_WORDS_CHARS = 400


def _last_exit(statuses: Iterable[Mapping[str, Any]]) -> tuple[int | None, str]:
    """The exit code and the last line of the termination message of the latest run that
    ended: the current state if the container is down, else the run before."""
    for status in statuses:
        ended = (status.get("state") or {}).get("terminated") or (
            status.get("lastState") or {}
        ).get("terminated")
        if ended:
            lines = (ended.get("message") or "").strip().splitlines()
            return ended.get("exitCode"), lines[-1].strip()[:LAST_WORDS_CHARS] if lines else ""
    return None, ""


def driver_pod_view(pod: Mapping[str, Any]) -> DriverPodView:
    meta, status = pod["metadata"], pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    last_exit, last_words = _last_exit(statuses)
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return DriverPodView(
        namespace=meta["namespace"],
        name=meta["name"],
        revision=(meta.get("labels") or {}).get(REVISION_LABEL, ""),
        ready=conditions.get("Ready") == "True",
        restarts=max((s.get("restartCount", 0) for s in statuses), default=0),
        terminating=bool(meta.get("deletionTimestamp")),
        runs=runs(pod),
        last_exit=last_exit,
        last_words=last_words,
    )


def current_revisions(daemonsets: Iterable[JSON], revisions: Iterable[JSON]) -> dict[str, str]:
    """DaemonSet uid -> the hash of its newest ControllerRevision."""
    newest: dict[str, tuple[int, str]] = {}
    for rev in revisions:
        owner = _controller(rev)
        if owner is None:
            continue
        number = int(rev.get("revision", 0))
        hash_ = (rev["metadata"].get("labels") or {}).get(REVISION_LABEL, "")
        if owner["uid"] not in newest or number > newest[owner["uid"]][0]:
            newest[owner["uid"]] = (number, hash_)
    uids = {ds["metadata"]["uid"] for ds in daemonsets}
    return {uid: h for uid, (_, h) in newest.items() if uid in uids}


def _selects(node_labels: Mapping[str, str], ds: Mapping[str, Any]) -> bool:
    selector = ds["spec"]["template"]["spec"].get("nodeSelector") or {}
    return all(node_labels.get(k) == v for k, v in selector.items())


def observe(
    nodes: Iterable[JSON], daemonsets: list[JSON], revisions: list[JSON], pods: Iterable[JSON]
) -> list[NodeView]:
    """NodeViews from raw API objects (pure, so the pass can be tested piece by piece)."""
    wanted = current_revisions(daemonsets, revisions)
    ds_uids = {ds["metadata"]["uid"] for ds in daemonsets}
    by_node: dict[str, list[JSON]] = defaultdict(list)
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name:
            by_node[node_name].append(pod)
    views = []
    for node in nodes:
        meta = node["metadata"]
        labels = meta.get("labels") or {}
        drivers = [
            p
            for p in by_node[meta["name"]]
            if (owner := _controller(p)) is not None and owner["uid"] in ds_uids
        ]
        # A terminating old pod may linger next to its replacement: the live one counts.
        drivers.sort(key=lambda p: bool(p["metadata"].get("deletionTimestamp")))
        driver = drivers[0] if drivers else None
        owner = _controller(driver) if driver else None
        uid = owner["uid"] if owner else None
        ds = next(
            (
                d
                for d in daemonsets
                if d["metadata"]["uid"] == uid or (not uid and _selects(labels, d))
            ),
            None,
        )
        conditions = {
            c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions") or []
        }
        views.append(
            NodeView(
                name=meta["name"],
                labels=labels,
                annotations=meta.get("annotations") or {},
                unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
                ready=conditions.get("Ready", "True") == "True",
                driver_pod=driver_pod_view(driver) if driver else None,
                desired_revision=wanted.get(ds["metadata"]["uid"]) if ds else None,
                desired_runs=runs(ds["spec"]["template"]) if ds else None,
                pods=tuple(pod_view(p) for p in by_node[meta["name"]] if p is not driver),
            )
        )
    return views


def rollout_pending(nodes: Iterable[JSON], daemonsets: Iterable[JSON]) -> bool:
    """Whether a pass has anything to do: a driver DaemonSet whose pods are not all of its
    current template (as its controller counts them), or a node mid-walk. Otherwise the
    pass stops before listing every pod of the cluster."""
    for ds in daemonsets:
        status = ds.get("status") or {}
        if status.get("observedGeneration") != ds["metadata"].get("generation"):
            return True
        if status.get("updatedNumberScheduled", 0) < status.get("desiredNumberScheduled", 0):
            return True
    done = ("", State.UPGRADE_DONE.value)
    return any((n["metadata"].get("labels") or {}).get(STATE_LABEL, "") not in done for n in nodes)


@dataclass
class NodeReport:
    state: str
    reason: str


@dataclass
class UpgradeStatus:
    """What a pass did and why nodes wait: the source of the policy's status.upgrade."""

    nodes: dict[str, NodeReport] = field(default_factory=dict)
    held: str = ""

    def counts(self) -> dict[str, int]:
        return dict(Counter(r.state for r in self.nodes.values() if r.state))

    def as_status(self) -> JSON:
        in_progress = {
            name: {"state": r.state, "reason": r.reason}
            for name, r in sorted(self.nodes.items())
            if r.state not in ("", State.UPGRADE_DONE)
        }
        return {"counts": self.counts(), "nodes": in_progress, "held": self.held}


async def _evict(kube: Kube, pod: PodView) -> str | None:
    """Evict one pod; the API's refusal (e.g. a PodDisruptionBudget) as a sentence."""
    path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/eviction"
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod.name, "namespace": pod.namespace},
    }
    try:
        await kube.create(path, body)
    except ApiError as exc:
        if exc.status == 404:
            return None  # gone already
        return f"eviction of {pod.ref} refused: {exc.message}"
    return None


async def apply_step(kube: Kube, node: NodeView, step: Step) -> None:
    """Apply one node's step. The state label goes last: a pass cut short is repeated."""
    path = f"{NODES}/{node.name}"
    if step.annotate:
        # The initial-unschedulable record lands before the cordon it describes.
        await kube.merge_patch(path, {"metadata": {"annotations": dict(step.annotate)}})
    if step.cordon is not None and step.cordon != node.unschedulable:
        await kube.merge_patch(path, {"spec": {"unschedulable": step.cordon}})
    refusals = [r for pod in step.evict if (r := await _evict(kube, pod))]
    if refusals or (step.evict and node.annotations.get(LAST_ERROR)):
        error = "; ".join(refusals)[:1024] or None
        if error != node.annotations.get(LAST_ERROR):
            await kube.merge_patch(path, {"metadata": {"annotations": {LAST_ERROR: error}}})
    for driver in step.delete:
        await kube.delete(f"/api/v1/namespaces/{driver.namespace}/pods/{driver.name}")
    if step.state is not None and step.state != node.state:
        await kube.label_node(node.name, {STATE_LABEL: step.state.value})


async def reconcile_upgrades(
    kube: Kube,
    policy: UpgradePolicySpec,
    namespace: str,
    now: float | None = None,
    *,
    events_on: Mapping[str, Any] | None = None,
) -> UpgradeStatus:
    """One pass of the driver upgrade over every XPU node: the function a controller timer
    calls. Safe to call from a fresh instance at any time; callers must make sure only one
    replica calls it at once (the operator's Lease). `events_on` (the policy object) gets
    an Event for every node transition."""
    now = time.time() if now is None else now
    apps = f"/apis/apps/v1/namespaces/{namespace}"
    daemonsets = await kube.list_items(f"{apps}/daemonsets", "app.kubernetes.io/component=driver")
    xpu_nodes = await kube.list_items(NODES, f"{PRESENT_LABEL}=true")
    if not rollout_pending(xpu_nodes, daemonsets):
        quiet = UpgradeStatus()
        for obj in xpu_nodes:
            state = (obj["metadata"].get("labels") or {}).get(STATE_LABEL, "")
            quiet.nodes[obj["metadata"]["name"]] = NodeReport(state, "the driver is up to date")
        return quiet
    views = observe(
        xpu_nodes,
        daemonsets,
        await kube.list_items(f"{apps}/controllerrevisions"),
        await kube.list_items("/api/v1/pods"),
    )
    result = plan(views, policy, now)
    status = UpgradeStatus(held=result.held)
    for node in views:
        step = result.steps[node.name]
        await apply_step(kube, node, step)
        status.nodes[node.name] = NodeReport(step.state.value if step.state else "", step.reason)
        if events_on is None:
            continue
        if step.state is not None and step.state != node.state:
            was = node.state.value if node.state else "none"
            kind = "Warning" if step.state is State.UPGRADE_FAILED else "Normal"
            message = f"node {node.name}: {was} -> {step.state.value}: {step.reason}"
            await kube.event(events_on, EVENTS_NAMESPACE, kind, "DriverUpgrade", message)
        elif STUCK_REPORTED in step.annotate:
            message = f"node {node.name} in {node.state} for long: {step.reason}"
            await kube.event(events_on, EVENTS_NAMESPACE, "Warning", "DriverUpgradeSlow", message)
    return status
