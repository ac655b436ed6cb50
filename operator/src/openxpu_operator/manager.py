"""The state manager: one pass that brings the cluster to what the active policy renders.

In operand order (driver → CDI → driver validation → device plugin + feature discovery →
exporter → workload validation): label the XPU nodes, server-side apply each operand's
objects, prune our objects that are no longer rendered (a disabled operand's), then read
back the DaemonSets, Jobs and pods and compute the status (`openxpu_operator.status`).
Node-local order is kept by the barrier files and the init containers that wait on them,
the cluster view by the status, which names the first operand (and node, pod, barrier)
that is not ready.

A pass costs O(1) requests on a cluster that is as rendered, whatever its size: our objects
are listed once per kind, and an object whose live copy already holds every rendered field
(and the hash of the rendered object, so a field dropped from a template is noticed) is not
applied again; a hand-made drift fails that comparison and is applied back. Only the
requests a change needs (a node label patch, a Job per new node) scale with the nodes, and
those run CONCURRENCY at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from openxpu_operator import nodes as node_labels
from openxpu_operator.drift import missing_fields
from openxpu_operator.kube import MANAGED_SELECTOR, ApiError, Kube, now
from openxpu_operator.policy import XPUClusterPolicy, XPUClusterPolicyStatus
from openxpu_operator.render import (
    OPERANDS,
    POLICY_LABEL,
    RenderContext,
    RenderedOperand,
    render_operands,
)
from openxpu_operator.status import (
    CRASH_LOOP,
    VALIDATION_FAILED,
    VALIDATION_NODE,
    Observation,
    compute_status,
    pod_problem,
)

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name
# Log tails fetched per pass, at most: the status needs the first failures, not all.
LOG_TAILS = 5
# Requests in flight at once when many of one kind are due (node labels, Jobs).
CONCURRENCY = 16
RENDERED_HASH = "openxpu.io/rendered-hash"

T = TypeVar("T")


async def bounded(calls: Iterable[Awaitable[T]], limit: int = CONCURRENCY) -> list[T]:
    """Await every call, at most `limit` at a time, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


def key(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def policy_selector(name: str) -> str:
    return f"{MANAGED_SELECTOR},{POLICY_LABEL}={name}"


@dataclass
class PassResult:
    status: XPUClusterPolicyStatus
    xpu_nodes: int
    operands_ready: int
    applied: int
    pruned: int


@dataclass
class XPUNodes:
    profiles: dict[str, str]  # node -> emulation profile
    disabled: dict[str, set[str]]  # node -> operands an admin keeps off it
    advertising: set[str]  # nodes whose kubelet advertises the XPU resource


async def label_nodes(kube: Kube, policy: XPUClusterPolicy, enabled: list[str]) -> XPUNodes:
    """Label every node as the policy wants; what the pass needs to know of the XPU nodes."""
    spec = policy.spec
    resource = spec.device_plugin.config.advertised_resource
    xpu: dict[str, str] = {}
    disabled: dict[str, set[str]] = {}
    advertising: set[str] = set()
    patches = []
    for node in await kube.nodes():
        name = node["metadata"]["name"]
        labels: dict[str, str] = node["metadata"].get("labels") or {}
        patch = node_labels.desired_labels(spec, enabled, labels)
        if patch:
            patches.append(kube.label_node(name, patch))
        if node_labels.is_xpu_node(spec, labels):
            xpu[name] = spec.node_profile(labels)
            disabled[name] = node_labels.admin_disabled(labels)
            if node_labels.advertises(node, resource):
                advertising.add(name)
    await bounded(patches)
    return XPUNodes(xpu, disabled, advertising)


def with_hash(obj: Mapping[str, Any]) -> JSON:
    """The rendered object carrying the hash of itself, as it is applied."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    meta = dict(obj["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), RENDERED_HASH: digest}
    return {**obj, "metadata": meta}


def difference(live: Any, want: Any, path: str = "") -> str | None:
    """The first field `want` sets that `live` lacks or holds with another value (lists
    item by item), or None: then applying `want` would change nothing. An empty or null
    field matches an absent one: the API server does not store empty optional fields. A
    value the API spells its own way (a quantity it normalises, "0.5" -> "500m") reads as a
    change: one needless apply, never a missed one."""
    if isinstance(want, dict):
        if not isinstance(live, dict):
            return path or "."
        for k, v in want.items():
            if k in live:
                found = difference(live[k], v, f"{path}.{k}")
            else:
                found = None if v in (None, {}, []) else f"{path}.{k}"
            if found:
                return found
        return None
    if isinstance(want, list):
        if not isinstance(live, list) or len(live) != len(want):
            return path
        for i, (a, b) in enumerate(zip(live, want, strict=True)):
            found = difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if live == want:
        return None
    # A number given where the API stores a quantity string (resource limits: 1 -> "1").
    numeric = isinstance(want, int | float) and not isinstance(want, bool)
    return None if numeric and live == str(want) else path


async def _apply_one(
    kube: Kube, operand: RenderedOperand, obj: JSON, errors: dict[str, str]
) -> JSON | None:
    try:
        return {"apiVersion": obj["apiVersion"], **await kube.apply(obj)}
    except ApiError as exc:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        if exc.status == 404 and obj["kind"] == "ServiceMonitor":
            log.info("%s skipped: %s is not installed", what, obj["apiVersion"])
        elif exc.status == 422 and obj["kind"] == "Job":
            # A Job's template is immutable: replace it; the next pass creates it anew.
            await kube.delete_object(obj)
        else:
            errors.setdefault(operand.name, f"{what}: {exc.message}")
    return None


async def _apply(
    kube: Kube, operand: RenderedOperand, existing: Mapping[Key, JSON], errors: dict[str, str]
) -> list[JSON]:
    """Apply what differs from the cluster, in template order; a run of objects of one kind
    (the Jobs, one per node) concurrently."""
    live: list[JSON] = []
    run: list[JSON] = []

    async def flush() -> None:
        results = await bounded(_apply_one(kube, operand, o, errors) for o in run)
        live.extend(r for r in results if r is not None)
        run.clear()

    for rendered in operand.objects:
        obj = with_hash(rendered)
        current = existing.get(key(obj))
        if current is not None:
            changed = difference(current, obj)
            if changed is None:
                live.append(current)
                continue
            log.debug("applying %s %s: %s differs", obj["kind"], obj["metadata"]["name"], changed)
        if run and run[-1]["kind"] != obj["kind"]:
            await flush()
        run.append(obj)
    await flush()
    return live


async def _log_tails(kube: Kube, namespace: str, pods: list[JSON]) -> dict[str, str]:
    tails: dict[str, str] = {}
    for pod in pods:
        if len(tails) >= LOG_TAILS:
            break
        problem = pod_problem(pod, {})
        if problem is None or problem.reason not in (CRASH_LOOP, VALIDATION_FAILED):
            continue
        container = pod["spec"]["containers"][0]["name"]
        name = pod["metadata"]["name"]
        tails[name] = await kube.log_tail(namespace, name, container, lines=10)
    return tails


async def prune(kube: Kube, existing: Iterable[JSON], keep: set[Key]) -> int:
    """Delete our objects of this policy that are not in `keep`."""
    count = 0
    for obj in existing:
        if key(obj) not in keep:
            log.info("pruning %s %s", obj["kind"], obj["metadata"]["name"])
            count += await kube.delete_object(obj)
    return count


async def reconcile(
    kube: Kube, policy: XPUClusterPolicy, namespace: str, previous: list[JSON]
) -> PassResult:
    """One pass for the active policy; returns its status (the caller writes it)."""
    spec = policy.spec
    name = policy.metadata["name"]
    enabled = [o.name for o in OPERANDS if o.enabled(spec)]
    nodes = await label_nodes(kube, policy, enabled)
    xpu, disabled = nodes.profiles, nodes.disabled
    await kube.ensure_namespace(namespace)
    existing = await kube.managed_objects(namespace, policy_selector(name))
    by_key = {key(o): o for o in existing}
    # A node's validation Job is created once its kubelet advertises the XPUs: a pod that
    # cannot be scheduled yet only collects scheduler back-off (up to 10 s a retry). A Job
    # that exists already stays (a node that lost its XPUs is not validated away).
    with_job = {
        (o["metadata"].get("annotations") or {}).get(VALIDATION_NODE)
        for o in existing
        if o["kind"] == "Job"
    }
    wanted = [n for n in sorted(xpu) if "workload-validation" not in disabled[n]]
    validated = tuple(n for n in wanted if n in nodes.advertising or n in with_job)
    operands = render_operands(policy, RenderContext(namespace=namespace, nodes=validated))
    errors: dict[str, str] = {}
    live: dict[tuple[str, str], JSON] = {}
    keep: set[Key] = set()
    for operand in operands:
        for obj in await _apply(kube, operand, by_key, errors):
            live[(obj["kind"], obj["metadata"]["name"])] = obj
        keep.update(key(o) for o in operand.objects)
    pruned = await prune(kube, existing, keep)
    pods = await kube.pods(namespace, policy_selector(name).split(",")[0])
    observation = Observation(
        generation=policy.metadata.get("generation", 1),
        operands=operands,
        objects=live,
        pods=pods,
        xpu_nodes=xpu,
        previous=previous,
        now=now(),
        log_tails=await _log_tails(kube, namespace, pods),
        apply_errors=errors,
        crd_missing=missing_fields(await kube.installed_crd()),
        admin_disabled=disabled,
        awaiting_xpus=[n for n in wanted if n not in validated],
        xpu_resource=policy.spec.device_plugin.config.advertised_resource,
    )
    status = compute_status(observation)
    ready = sum(1 for o in status.operands if o.enabled and not o.reason)
    return PassResult(status, len(xpu), ready, len(live), pruned)
