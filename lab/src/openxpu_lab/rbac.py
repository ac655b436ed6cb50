"""Least-privilege roles of the lab's host processes that are not Kubernetes components
(CoreDNS, the KWOK controller): each has its own client certificate and only these rules."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from openxpu_lab import kube
from openxpu_lab.controlplane import COREDNS_USER, KWOK_USER

READ = ["list", "watch"]
WRITE_STATUS = ["patch", "update"]

# CoreDNS's kubernetes plugin (with `pods insecure`, which needs no pod watch).
COREDNS_RULES = [
    {"apiGroups": [""], "resources": ["services", "namespaces"], "verbs": READ},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": READ},
]
# kwok v0.7 without its CRDs: it keeps the fake nodes' status and leases, moves pods on them
# through their phases, deletes them when they finish terminating, and records events.
KWOK_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", *READ]},
    {"apiGroups": [""], "resources": ["nodes/status", "pods/status"], "verbs": WRITE_STATUS},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", *READ, *WRITE_STATUS, "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", *WRITE_STATUS]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "verbs": ["create", "get", *READ, *WRITE_STATUS],
    },
]
ROLES = {COREDNS_USER: COREDNS_RULES, KWOK_USER: KWOK_RULES}


def _role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    }


def _binding(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}],
    }


def ensure_component_roles(api: Any) -> None:
    """One ClusterRole and binding per identity, named after it."""
    rbac = client.RbacAuthorizationV1Api(api)
    for user, rules in ROLES.items():
        kube.apply_cluster_wide(
            rbac.create_cluster_role, rbac.replace_cluster_role, _role(user, rules)
        )
        kube.apply_cluster_wide(
            rbac.create_cluster_role_binding, rbac.replace_cluster_role_binding, _binding(user)
        )
