"""The state manager's pass (in-process, admin credentials) against a real kube-apiserver:
a pass over a cluster that is already as rendered writes nothing, whatever its size; a
hand-made drift is applied back; a new node costs its label patch and its Job, no more."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from conftest import Cluster, needs_etcd
from operator_process import node_body

from openxpu_operator.kube import Kube
from openxpu_operator.manager import reconcile
from openxpu_operator.policy import load_policy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), needs_etcd]

NAMESPACE = "openxpu-pass"
DS = f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets"


class Writes:
    """Counts the writes a Kube makes (applies and label patches), by wrapping the real
    client's methods: every request still reaches the API server."""

    def __init__(self, kube: Kube) -> None:
        self.applied: list[str] = []
        self.labelled: list[str] = []
        apply, label = kube.apply, kube.label_node

        async def counted_apply(obj: Any) -> Any:
            self.applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
            return await apply(obj)

        async def counted_label(name: str, labels: Any) -> None:
            self.labelled.append(name)
            await label(name, labels)

        kube.apply = counted_apply  # type: ignore[method-assign]
        kube.label_node = counted_label  # type: ignore[method-assign]

    def reset(self) -> None:
        self.applied.clear()
        self.labelled.clear()


@pytest.fixture
async def kube(cluster: Cluster) -> AsyncIterator[Kube]:
    tls = ssl.create_default_context(cafile=str(cluster.api.ca_cert))
    tls.load_cert_chain(str(cluster.api.client_cert), str(cluster.api.client_key))
    async with httpx.AsyncClient(base_url=cluster.api.url, verify=tls, timeout=30) as http:
        yield Kube(http)


@pytest.fixture
def nodes(cluster: Cluster) -> Iterator[list[str]]:
    names = ["pass-1", "pass-2"]
    for name in names:
        r = cluster.http.post("/api/v1/nodes", json=node_body(name))
        assert r.status_code == 201, r.text
    yield names
    for name in [*names, "pass-3"]:
        cluster.http.delete(f"/api/v1/nodes/{name}")


async def test_an_unchanged_cluster_costs_no_writes_and_drift_is_put_back(
    cluster: Cluster, kube: Kube, nodes: list[str]
) -> None:
    created = cluster.policy("pass", {"nodeSelector": {}})
    assert created.status_code == 201, created.text
    try:
        policy = load_policy(created.json())
        writes = Writes(kube)
        first = await reconcile(kube, policy, NAMESPACE, [])
        assert first.applied > 0 and sorted(writes.labelled) == nodes
        jobs = [w for w in writes.applied if w.startswith("Job/")]
        assert len(jobs) == len(nodes)

        writes.reset()
        again = await reconcile(kube, policy, NAMESPACE, [])
        assert (writes.applied, writes.labelled) == ([], [])
        assert again.applied == first.applied  # the live objects, read instead of written

        # A hand-made change to a field the operator sets is put back by the next pass.
        driver = next(
            d for d in cluster.http.get(DS).json()["items"] if "driver" in d["metadata"]["name"]
        )
        path = f"{DS}/{driver['metadata']['name']}"
        container = driver["spec"]["template"]["spec"]["containers"][0]
        patch = {
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": container["name"], "image": "drift:1"}]}
                }
            }
        }
        r = cluster.http.patch(
            path, json=patch, headers={"Content-Type": "application/strategic-merge-patch+json"}
        )
        assert r.status_code == 200, r.text
        writes.reset()
        await reconcile(kube, policy, NAMESPACE, [])
        assert writes.applied == [f"DaemonSet/{driver['metadata']['name']}"]
        live = cluster.http.get(path).json()["spec"]["template"]["spec"]["containers"][0]
        assert live["image"] == container["image"]

        # A new node whose device plugin has not registered: labelled, and no Job yet (its
        # pod could not be scheduled); the status says what it waits for.
        r = cluster.http.post("/api/v1/nodes", json=node_body("pass-3", xpus=0))
        assert r.status_code == 201, r.text
        writes.reset()
        waiting = await reconcile(kube, policy, NAMESPACE, [])
        assert (writes.labelled, writes.applied) == (["pass-3"], [])
        validation = next(o for o in waiting.status.operands if o.name == "workload-validation")
        assert validation.reason == "XPUsNotAdvertised" and "pass-3" in validation.message
        assert (validation.desired, validation.ready) == (3, 0)

        # Its XPUs advertised: its validation Job, nothing else.
        xpus = {"openxpu.io/xpu": "2"}
        r = cluster.http.patch(
            "/api/v1/nodes/pass-3/status",
            json={"status": {"capacity": xpus, "allocatable": xpus}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status_code == 200, r.text
        writes.reset()
        await reconcile(kube, policy, NAMESPACE, [])
        assert writes.labelled == []
        assert len(writes.applied) == 1 and writes.applied[0].startswith("Job/")
    finally:
        cluster.http.delete("/apis/openxpu.io/v1/xpuclusterpolicies/pass")
        cluster.http.delete(f"/api/v1/namespaces/{NAMESPACE}")
