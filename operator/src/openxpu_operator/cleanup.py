"""Uninstall: what the finalizer does when the active policy is deleted.

1. delete every operand object of the policy and remove every label the stack put on nodes
   (an admin's `deploy.<operand>=false` stays);
2. once no operand pod is left, run one cleanup pod per former XPU node (manifests/90-cleanup)
   that removes the host files: /dev/xpuN, /opt/openxpu/driver, /run/openxpu, the CDI spec;
3. done when every cleanup pod Succeeded. The caller retries until then, and gives up
   after a timeout (a node that never runs the pod: down, or no kubelet at all) so a
   deletion never hangs forever; it says which nodes were not cleaned.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
import yaml

from openxpu_operator import nodes as node_labels
from openxpu_operator.kube import MANAGED_SELECTOR, Kube
from openxpu_operator.manager import policy_selector
from openxpu_operator.policy import XPUClusterPolicy
from openxpu_operator.render import POLICY_LABEL
from openxpu_operator.upgrade.rollout import forget_upgrade

CLEANUP_TEMPLATE = "90-cleanup/pod.yaml.j2"
CLEANUP_COMPONENT = "app.kubernetes.io/component=cleanup"
CLEANUP_NODE = "openxpu.io/cleanup-node"


@dataclass(frozen=True)
class Progress:
    """Where an uninstall stands: done, or what it still waits for."""

    done: bool
    waiting_for: str = ""
    unclean_nodes: tuple[str, ...] = ()


def cleanup_pod(policy: XPUClusterPolicy, node: str, namespace: str) -> dict[str, Any]:
    text = (resources.files("openxpu_operator") / "manifests" / CLEANUP_TEMPLATE).read_text()
    template = jinja2.Template(text, undefined=jinja2.StrictUndefined, autoescape=False)
    digest = hashlib.sha256(node.encode()).hexdigest()[:10]
    rendered = template.render(
        name=f"openxpu-cleanup-{digest}",
        namespace=namespace,
        node=node,
        policy=policy.metadata["name"],
        image=policy.spec.driver.image,
    )
    obj: dict[str, Any] = yaml.safe_load(rendered)
    return obj


async def _remove_labels(kube: Kube) -> list[str]:
    """Remove the stack's labels from every node; the nodes that had any."""
    touched = []
    for node in await kube.nodes():
        labels = node["metadata"].get("labels") or {}
        patch = node_labels.removal(labels)
        if patch:
            touched.append(node["metadata"]["name"])
            await kube.label_node(node["metadata"]["name"], patch)
        await forget_upgrade(kube, node)
    return touched


async def uninstall_step(
    kube: Kube, policy: XPUClusterPolicy, namespace: str, former_nodes: list[str]
) -> tuple[Progress, list[str]]:
    """One idempotent step of the uninstall; also returns the former XPU nodes (remembered
    by the caller across retries, since their labels are gone after the first step)."""
    name = policy.metadata["name"]
    operands = [
        o
        for o in await kube.managed_objects(namespace, policy_selector(name))
        if o["kind"] != "Pod"
    ]
    for obj in operands:
        await kube.delete_object(obj)
    former = sorted(set(former_nodes) | set(await _remove_labels(kube)))
    pods = await kube.pods(namespace, MANAGED_SELECTOR)
    operand_pods = [p for p in pods if not _is_cleanup(p)]
    if operands or operand_pods:
        left = len(operands) + len(operand_pods)
        return Progress(False, f"{left} operand objects and pods to go", tuple(former)), former
    existing = {p["metadata"].get("annotations", {}).get(CLEANUP_NODE): p for p in pods}
    unclean = []
    for node in former:
        pod = existing.get(node)
        if pod is None:
            await kube.create(
                f"/api/v1/namespaces/{namespace}/pods", cleanup_pod(policy, node, namespace)
            )
            unclean.append(node)
        elif (pod.get("status") or {}).get("phase") != "Succeeded":
            unclean.append(node)
    if unclean:
        return Progress(False, f"cleanup pods on {', '.join(unclean)}", tuple(unclean)), former
    await remove_cleanup_pods(kube, namespace, name)
    return Progress(True), former


def _is_cleanup(pod: dict[str, Any]) -> bool:
    component: str = pod["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
    return component == "cleanup"


async def remove_cleanup_pods(
    kube: Kube, namespace: str, policy: str, *, force: bool = False
) -> None:
    """Delete the policy's cleanup pods; `force` when giving up on them (their node's
    kubelet may never confirm a graceful deletion)."""
    selector = f"{CLEANUP_COMPONENT},{POLICY_LABEL}={policy}"
    for pod in await kube.pods(namespace, selector):
        path = f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}"
        await kube.delete(path, force=force)
