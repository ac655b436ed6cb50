"""The operator SIGKILLed at random points of its reconciles (and of an uninstall), 10 times
and then some, converges: exactly the rendered objects, each owned by the policy, no
duplicates, no orphans, and after deletion nothing left."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import needs_etcd
from operator_process import (
    CLEANUP_TIMEOUT,
    NAMESPACE,
    POLICIES,
    Env,
    Operator,
    environment,
    operator,
    wait_until,
)

from openxpu_operator.manager import key
from openxpu_operator.policy import load_policy
from openxpu_operator.render import OPERAND_LABEL, RenderContext, render_operands

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), needs_etcd]

KILLS = 10
SPEC = {
    "emulation": {
        "nodePools": [{"name": "big", "nodeSelector": {"pool": "big"}, "profile": "x1-8"}]
    }
}
NODES = {"k-1": {"pool": "big"}, "k-2": {}, "k-3": {}}
KINDS = {
    "/api/v1/namespaces/openxpu/configmaps": ("v1", "ConfigMap"),
    "/api/v1/namespaces/openxpu/services": ("v1", "Service"),
    "/api/v1/namespaces/openxpu/serviceaccounts": ("v1", "ServiceAccount"),
    "/apis/apps/v1/namespaces/openxpu/daemonsets": ("apps/v1", "DaemonSet"),
    "/apis/batch/v1/namespaces/openxpu/jobs": ("batch/v1", "Job"),
    "/apis/rbac.authorization.k8s.io/v1/clusterroles": (
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
    ),
    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings": (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
    ),
    "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies": (
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicy",
    ),
    "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings": (
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicyBinding",
    ),
    "/api/v1/namespaces/openxpu/pods": ("v1", "Pod"),
}
MANAGED = "app.kubernetes.io/managed-by=openxpu-operator"


def _managed(env: Env) -> list[tuple[tuple[str, str, str, str], str]]:
    """Every object carrying our label, with its owner's uid."""
    found = []
    for path, (api_version, kind) in KINDS.items():
        for item in env.items(path, MANAGED):
            if kind == "Pod" and OPERAND_LABEL not in item["metadata"].get("labels", {}):
                continue  # pods of operands come from their controllers, none runs here
            owners = item["metadata"].get("ownerReferences") or [{}]
            found.append(
                (key({"apiVersion": api_version, "kind": kind, **item}), owners[0].get("uid", ""))
            )
    return found


def _rendered(env: Env, name: str) -> set[tuple[str, str, str, str]]:
    policy = load_policy(env.policy(name))
    nodes = tuple(sorted(NODES))  # an empty nodeSelector: every node is an XPU node
    operands = render_operands(policy, RenderContext(namespace=NAMESPACE, nodes=nodes))
    return {key(o) for op in operands for o in op.objects}


def _kill_after(op: Operator, rng: random.Random) -> float:
    delay = rng.uniform(0.5, 3.0)  # startup takes about a second
    time.sleep(delay)
    op.kill()
    return delay


def test_sigkill_at_random_points_converges(tmp_path: Path) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    print(f"seed {seed}")
    with environment() as env:
        for node, labels in NODES.items():
            env.create_node(node, labels)
        env.create_policy("k", SPEC)
        delays = []
        for i in range(KILLS):
            op = Operator(env.kubeconfig, "replica-a", tmp_path / "operator.log")
            if i % 3 == 1:  # change the spec under the operator's feet, now and then
                enabled = i % 2 == 0
                env.http.patch(
                    f"{POLICIES}/k",
                    json={"spec": {"exporter": {"enabled": enabled}}},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
            delays.append(_kill_after(op, rng))
        print("killed after", [f"{d:.2f}s" for d in delays])

        with operator(env, tmp_path, "replica-a"):
            generation = env.policy("k")["metadata"]["generation"]  # type: ignore[index]
            wait_until(
                "the last spec reconciled",
                lambda: (
                    (env.policy("k") or {}).get("status", {}).get("observedGeneration")
                    == generation
                    and env.condition("k", "Ready").get("reason") == "OperandNotReady"
                ),
                60,
            )
            uid = env.policy("k")["metadata"]["uid"]  # type: ignore[index]
            want = _rendered(env, "k")
            wait_until(
                "exactly the rendered objects", lambda: {k for k, _ in _managed(env)} == want, 30
            )
            managed = _managed(env)
            duplicates = [k for k, n in Counter(k for k, _ in managed).items() if n > 1]
            assert not duplicates
            orphans = [k for k, owner in managed if owner != uid]
            assert not orphans, orphans
            labelled = [
                n for n in NODES if env.node_labels(n).get("openxpu.io/xpu.present") == "true"
            ]
            assert labelled == list(NODES)

        # Uninstall, killed too.
        env.http.delete(f"{POLICIES}/k")
        for _ in range(3):
            op = Operator(env.kubeconfig, "replica-a", tmp_path / "operator.log")
            _kill_after(op, rng)
        with operator(env, tmp_path, "replica-a"):
            wait_until("the policy gone", lambda: env.policy("k") is None, CLEANUP_TIMEOUT + 60)
            assert _managed(env) == []
            for node in NODES:
                left = {k for k in env.node_labels(node) if k.startswith("openxpu.io/")}
                assert not left, (node, left)
            cleanup = env.items(
                "/api/v1/namespaces/openxpu/pods", "app.kubernetes.io/component=cleanup"
            )
            assert not cleanup
