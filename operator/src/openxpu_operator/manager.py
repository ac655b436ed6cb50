"""The state manager: one pass that brings the cluster to what the active policy renders.

In operand order (driver → CDI → driver validation → device plugin + feature discovery →
exporter → workload validation): label the XPU nodes, server-side apply each operand's
objects, prune our objects that are no longer rendered (a disabled operand's), then read
back the DaemonSets, Jobs and pods and compute the status (`openxpu_operator.status`).
Every pass applies every enabled operand: node-local order is kept by the barrier files and
the init containers that wait on them, the cluster view by the status, which names the
first operand (and node, pod, barrier) that is not ready.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    Observation,
    compute_status,
    pod_problem,
)

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name
# Log tails fetched per pass, at most: the status needs the first failures, not all.
LOG_TAILS = 5


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


async def label_nodes(
    kube: Kube, policy: XPUClusterPolicy, enabled: list[str]
) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Label every node as the policy wants; the XPU nodes (name → profile) and the
    operands an admin keeps off each of them."""
    spec = policy.spec
    xpu: dict[str, str] = {}
    disabled: dict[str, set[str]] = {}
    for node in await kube.nodes():
        name = node["metadata"]["name"]
        labels: dict[str, str] = node["metadata"].get("labels") or {}
        patch = node_labels.desired_labels(spec, enabled, labels)
        await kube.label_node(name, patch)
        if node_labels.is_xpu_node(spec, labels):
            xpu[name] = spec.node_profile(labels)
            disabled[name] = node_labels.admin_disabled(labels)
    return xpu, disabled


async def _apply(kube: Kube, operand: RenderedOperand, errors: dict[str, str]) -> list[JSON]:
    live: list[JSON] = []
    for obj in operand.objects:
        try:
            live.append({"apiVersion": obj["apiVersion"], **await kube.apply(obj)})
        except ApiError as exc:
            what = f"{obj['kind']} {obj['metadata']['name']}"
            if exc.status == 404 and obj["kind"] == "ServiceMonitor":
                log.info("%s skipped: %s is not installed", what, obj["apiVersion"])
            elif exc.status == 422 and obj["kind"] == "Job":
                # A Job's template is immutable: replace it; the next pass creates it anew.
                await kube.delete_object(obj)
            else:
                errors.setdefault(operand.name, f"{what}: {exc.message}")
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


async def prune(kube: Kube, namespace: str, name: str, keep: set[Key]) -> int:
    """Delete our objects of this policy that are not in `keep`."""
    count = 0
    for obj in await kube.managed_objects(namespace, policy_selector(name)):
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
    xpu, disabled = await label_nodes(kube, policy, enabled)
    validated = tuple(n for n in sorted(xpu) if "workload-validation" not in disabled[n])
    operands = render_operands(policy, RenderContext(namespace=namespace, nodes=validated))
    await kube.ensure_namespace(namespace)
    errors: dict[str, str] = {}
    live: dict[tuple[str, str], JSON] = {}
    keep: set[Key] = set()
    for operand in operands:
        for obj in await _apply(kube, operand, errors):
            live[(obj["kind"], obj["metadata"]["name"])] = obj
        keep.update(key(o) for o in operand.objects)
    pruned = await prune(kube, namespace, name, keep)
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
    )
    status = compute_status(observation)
    ready = sum(1 for o in status.operands if o.enabled and not o.reason)
    return PassResult(status, len(xpu), ready, len(live), pruned)
