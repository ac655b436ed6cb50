"""Feature discovery may change only `openxpu.io/*` labels, and only on its own node.

Against a real kube-apiserver (apiserver-only, no kubelet): the operator's rendered feature
discovery RBAC and ValidatingAdmissionPolicy are applied, two Nodes and a Pod bound to one
of them are made by hand, and a token of the feature-discovery ServiceAccount bound to that
Pod (so carrying the node-name claim, as the kubelet's projected token does) acts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from openxpu_lab import apiserver_only
from openxpu_lab.envtest import ApiServer

from .support import NS, Doc, apply, demo_stack, kubectl, operator_operands

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.path.exists("/usr/bin/etcd"),
    reason="needs etcd (root installs it with apt)",
)

SA = "openxpu-feature-discovery"
OWN, OTHER = "xpu-node-a", "xpu-node-b"
POD = "feature-discovery-probe"
ADMISSION_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def _feature_discovery_access(docs: list[Doc]) -> list[Doc]:
    kinds = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", *ADMISSION_KINDS)
    return [d for d in docs if d["kind"] in kinds and d["metadata"]["name"].startswith(SA)]


def _node(name: str) -> Doc:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"zone": "a"}}}


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with apiserver_only() as server:
        kubectl(server, "create", "namespace", NS)
        objects = _feature_discovery_access(operator_operands())
        assert {d["kind"] for d in objects} >= set(ADMISSION_KINDS)
        apply(server, objects)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD, "namespace": NS},
            "spec": {
                "nodeName": OWN,
                "serviceAccountName": SA,
                "containers": [{"name": "c", "image": "openxpu/openxpu:dev"}],
            },
        }
        apply(server, [_node(OWN), _node(OTHER), pod])
        yield server


def _token(api: ApiServer, *bound: str) -> str:
    return kubectl(api, "create", "token", SA, "-n", NS, *bound).stdout.strip()


@pytest.fixture(scope="module")
def pod_token(api: ApiServer) -> str:
    token = _token(api, "--bound-object-kind=Pod", f"--bound-object-name={POD}")
    _wait_until_policy_enforced(api, token)
    return token


def _wait_until_policy_enforced(api: ApiServer, token: str, timeout: float = 60.0) -> None:
    """The apiserver loads a new admission policy into its admission chain asynchronously
    (about a second, longer on a loaded machine): until then every patch is allowed. A
    server-side dry run goes through admission without changing anything."""
    deadline = time.monotonic() + timeout
    probe = json.dumps({"metadata": {"labels": {"openxpu.io/probe": "1"}}})
    while True:
        out = kubectl(
            api,
            "patch",
            "node",
            OTHER,
            "--type=merge",
            "--dry-run=server",
            "-p",
            probe,
            token=token,
            check=False,
        )
        if out.returncode != 0 and "openxpu-feature-discovery-own-node" in out.stderr:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the admission policy never took effect: {out.stderr}")
        time.sleep(0.5)


def _patch(api: ApiServer, token: str, node: str, patch: Doc) -> tuple[bool, str]:
    """Patch the node as the token's user, the way feature discovery does (a merge patch)."""
    out = kubectl(
        api,
        "patch",
        "node",
        node,
        "--type=merge",
        "-p",
        json.dumps(patch),
        token=token,
        check=False,
    )
    return out.returncode == 0, out.stderr


def _labels(api: ApiServer, node: str) -> dict[str, str]:
    got = json.loads(kubectl(api, "get", "node", node, "-o", "json").stdout)
    labels: dict[str, str] = got["metadata"].get("labels", {})
    return labels


@pytest.mark.integration
def test_the_pod_bound_token_carries_the_node_claim(api: ApiServer, pod_token: str) -> None:
    who = json.loads(kubectl(api, "auth", "whoami", "-o", "json", token=pod_token).stdout)
    extra = who["status"]["userInfo"]["extra"]
    assert extra["authentication.kubernetes.io/node-name"] == [OWN]


@pytest.mark.integration
def test_own_node_openxpu_labels_may_be_set_and_removed(api: ApiServer, pod_token: str) -> None:
    ok, err = _patch(api, pod_token, OWN, {"metadata": {"labels": {"openxpu.io/xpu.count": "8"}}})
    assert ok, err
    assert _labels(api, OWN)["openxpu.io/xpu.count"] == "8"
    ok, err = _patch(api, pod_token, OWN, {"metadata": {"labels": {"openxpu.io/xpu.count": None}}})
    assert ok, err
    assert "openxpu.io/xpu.count" not in _labels(api, OWN)


@pytest.mark.integration
def test_another_node_is_refused(api: ApiServer, pod_token: str) -> None:
    ok, err = _patch(api, pod_token, OTHER, {"metadata": {"labels": {"openxpu.io/xpu.count": "8"}}})
    assert not ok
    assert "only change the node its pod runs on" in err
    assert "openxpu.io/xpu.count" not in _labels(api, OTHER)


REFUSED = {
    "taint": {"spec": {"taints": [{"key": "x", "value": "y", "effect": "NoSchedule"}]}},
    "cordon": {"spec": {"unschedulable": True}},
    "other label": {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}},
    "other label changed": {"metadata": {"labels": {"zone": "b"}}},
    "other label removed": {"metadata": {"labels": {"zone": None}}},
    "look-alike prefix": {"metadata": {"labels": {"xopenxpu.io/x": "1"}}},
    "annotation": {"metadata": {"annotations": {"openxpu.io/note": "x"}}},
    "openxpu label with a taint": {
        "metadata": {"labels": {"openxpu.io/xpu.count": "8"}},
        "spec": {"unschedulable": True},
    },
}


@pytest.mark.integration
@pytest.mark.parametrize("change", sorted(REFUSED))
def test_anything_but_openxpu_labels_is_refused_on_its_own_node(
    api: ApiServer, pod_token: str, change: str
) -> None:
    before = json.loads(kubectl(api, "get", "node", OWN, "-o", "json").stdout)
    ok, err = _patch(api, pod_token, OWN, REFUSED[change])
    assert not ok, f"{change} was allowed"
    assert "openxpu-feature-discovery-own-node" in err, err
    after = json.loads(kubectl(api, "get", "node", OWN, "-o", "json").stdout)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


@pytest.mark.integration
def test_a_token_not_bound_to_a_pod_is_refused(api: ApiServer) -> None:
    unbound = _token(api)
    ok, err = _patch(api, unbound, OWN, {"metadata": {"labels": {"openxpu.io/xpu.count": "8"}}})
    assert not ok
    assert "needs a pod-bound token" in err


@pytest.mark.integration
def test_other_users_are_not_affected(api: ApiServer) -> None:
    kubectl(api, "patch", "node", OTHER, "--type=merge", "-p", '{"spec":{"unschedulable":true}}')
    kubectl(api, "patch", "node", OTHER, "--type=merge", "-p", '{"spec":{"unschedulable":null}}')


@pytest.mark.unit
def test_the_demo_stack_carries_the_same_policy() -> None:
    def admission(docs: list[Doc]) -> list[tuple[str, Doc]]:
        return [(d["kind"], d["spec"]) for d in docs if d["kind"] in ADMISSION_KINDS]

    operator = admission(operator_operands())
    assert len(operator) == 2
    assert admission(demo_stack()) == operator
