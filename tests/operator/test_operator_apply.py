"""The rendered operands are real objects: a real kube-apiserver takes every one of them by
server-side apply with the operator's field manager, and a second apply changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from conftest import POLICIES, Cluster, needs_etcd
from test_operator_render import NODES, VARIANTS

from openxpu_operator.policy import load_policy
from openxpu_operator.render import RenderContext, object_path, render_operands

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800), needs_etcd]

NAMESPACE = "openxpu"
# The lab's apiserver-only mode has no Prometheus Operator CRDs.
NOT_INSTALLED = {"monitoring.coreos.com/v1"}


def _apply(cluster: Cluster, obj: dict[str, Any]) -> dict[str, Any]:
    r = cluster.http.patch(
        object_path(obj),
        content=yaml.safe_dump(obj),
        headers={"Content-Type": "application/apply-patch+yaml"},
        params={"fieldManager": "openxpu-operator", "force": "true"},
    )
    assert r.status_code in (200, 201), f"{object_path(obj)}: {r.text}"
    applied: dict[str, Any] = r.json()
    return applied


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_operands_server_side_apply_cleanly(cluster: Cluster, variant: str) -> None:
    ns = cluster.http.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}})
    assert ns.status_code in (201, 409), ns.text
    name = f"golden-{variant}"
    created = cluster.policy(name, VARIANTS[variant])
    assert created.status_code == 201, created.text
    objects: list[dict[str, Any]] = []
    try:
        policy = load_policy(created.json())
        operands = render_operands(policy, RenderContext(namespace=NAMESPACE, nodes=NODES))
        objects = [
            obj for o in operands for obj in o.objects if obj["apiVersion"] not in NOT_INSTALLED
        ]
        assert objects or variant == "everything-off"
        versions = {}
        for obj in objects:
            applied = _apply(cluster, obj)
            assert (
                applied["metadata"]["ownerReferences"][0]["uid"]
                == created.json()["metadata"]["uid"]
            )
            versions[object_path(obj)] = applied["metadata"]["resourceVersion"]
        # Idempotent: the same render applied again is no write at all.
        for obj in objects:
            again = _apply(cluster, obj)
            assert again["metadata"]["resourceVersion"] == versions[object_path(obj)], object_path(
                obj
            )
    finally:
        cluster.http.delete(f"{POLICIES}/{name}")
        # No garbage collector runs here: delete the dependents ourselves, and in the
        # background, as Jobs default to orphaning (a finalizer only the collector removes).
        for obj in reversed(objects):
            cluster.http.delete(object_path(obj), params={"propagationPolicy": "Background"})
