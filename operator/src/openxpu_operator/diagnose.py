"""`openxpu-operator diagnose`: the status's explanation, printed, and a debug bundle.

The explanation is read from the policies' status (what the operator computed), so it is the
same text `kubectl get xcp -o yaml` shows. The bundle (tar.gz) holds the policies, every
object the operator manages, the operand pods with their statuses and log tails, and the
nodes' labels: what a must-gather would collect, without a script from the internet.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from openxpu_operator.kube import MANAGED_SELECTOR, Kube

JSON = dict[str, Any]
LOG_LINES = 50


def explain(policy: Mapping[str, Any]) -> str:
    """A policy's status as a few lines for people."""
    name = policy["metadata"]["name"]
    status = policy.get("status") or {}
    lines = [
        f"policy {name}: state {status.get('state') or 'unknown (not reconciled yet)'}"
        + (f", operands {status['operandsReady']}" if status.get("operandsReady") else "")
        + (f", XPU nodes ready {status['nodesReady']}" if status.get("nodesReady") else "")
    ]
    generation = policy["metadata"].get("generation")
    observed = status.get("observedGeneration")
    if observed is not None and observed != generation:
        lines.append(f"  (status is for generation {observed}; the spec is at {generation})")
    for c in status.get("conditions") or []:
        if c.get("type") == "Error" and c.get("status") != "True":
            continue
        if c.get("type") not in ("Ready", "Error") and c.get("status") == "True":
            continue
        message = f": {c['message']}" if c.get("message") else ""
        lines.append(f"  {c['type']}={c['status']} {c.get('reason', '')}{message}")
    for node in (status.get("nodes") or {}).get("notReady") or []:
        lines.append(f"  node {node['name']} not ready: {node['reason']}: {node['message']}")
    return "\n".join(lines)


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


async def gather(kube: Kube, namespace: str, bundle: Path) -> list[JSON]:
    """Write the bundle; returns the policies (for the explanation)."""
    policies = await kube.policies()
    objects = await kube.managed_objects(namespace, MANAGED_SELECTOR)
    pods = await kube.pods(namespace, MANAGED_SELECTOR)
    nodes = await kube.nodes()
    with tarfile.open(bundle, "w:gz") as tar:
        _add(tar, "policies.yaml", yaml.safe_dump_all(policies, sort_keys=False))
        _add(tar, "operands.yaml", yaml.safe_dump_all(objects, sort_keys=False))
        _add(tar, "pods.yaml", yaml.safe_dump_all(pods, sort_keys=False))
        labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in nodes}
        _add(tar, "node-labels.yaml", yaml.safe_dump(labels, sort_keys=True))
        for pod in pods:
            name = pod["metadata"]["name"]
            spec = pod.get("spec") or {}
            for c in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
                tail = await kube.log_tail(namespace, name, c["name"], LOG_LINES)
                _add(tar, f"logs/{name}/{c['name']}.log", tail)
        _add(tar, "explanation.txt", "\n".join(explain(p) for p in policies) + "\n")
    return policies
