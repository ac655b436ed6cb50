"""Driver upgrade at scale (issue 11): 100 KWOK-simulated XPU nodes, maxParallelUpgrades 10.

A real kube-apiserver (envtest) with the real DaemonSet controller (kube-controller-manager,
only that controller), the real scheduler, and the KWOK controller, which plays every
node's kubelet: it marks the driver pods Running and Ready and finishes the deleted ones.
The upgrade passes are the operator's (`reconcile_upgrades`), run in a loop as the
controller would. Prints the rollout time; asserts only that every node ends upgrade-done
with never more than 10 at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from conftest import needs_etcd

from openxpu_lab import apiserver_only, gobuild, paths
from openxpu_lab.envtest import ApiServer
from openxpu_lab.kwok import node_manifest
from openxpu_operator.kube import Kube
from openxpu_operator.nodes import desired_labels
from openxpu_operator.policy import XPUClusterPolicy, load_policy
from openxpu_operator.render import RenderContext, render_operands
from openxpu_operator.upgrade.executor import reconcile_upgrades
from openxpu_operator.upgrade.machine import IN_PROGRESS

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800), needs_etcd]

NODES = int(os.environ.get("OPENXPU_KWOK_NODES", "100"))
PARALLEL = 10
NAMESPACE = "openxpu"
SELECTOR = {"type": "kwok"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _policy(version: str) -> XPUClusterPolicy:
    spec = {
        "nodeSelector": SELECTOR,
        "driver": {
            "version": version,
            "upgradePolicy": {"maxParallelUpgrades": PARALLEL, "maxUnavailable": PARALLEL},
        },
    }
    return load_policy(
        {"metadata": {"name": "scale", "uid": "u-scale", "generation": 1}, "spec": spec}
    )


@pytest.fixture(scope="module")
def controllers() -> Iterator[ApiServer]:
    """envtest plus the DaemonSet controller, the scheduler and KWOK, stopped by pid at the
    end."""
    with apiserver_only() as api:
        log = (api.state_dir / "controllers.log").open("ab")
        kcm = subprocess.Popen(
            [
                str(paths.k8s_bin_dir() / "kube-controller-manager"),
                f"--kubeconfig={api.kubeconfig}",
                "--controllers=daemonset",
                "--leader-elect=false",
                "--secure-port=0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # DaemonSet pods are bound to their node by the scheduler.
        scheduler = subprocess.Popen(
            [
                str(paths.k8s_bin_dir() / "kube-scheduler"),
                f"--kubeconfig={api.kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        kwok = subprocess.Popen(
            [
                str(gobuild.kwok_tool().bin_dir / "kwok"),
                f"--kubeconfig={api.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--cidr=10.89.0.0/16",
                "--node-ip=10.87.0.2",
                f"--server-address=127.0.0.1:{_free_port()}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield api
        finally:
            for proc in (kwok, scheduler, kcm):
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            log.close()
            tail = (api.state_dir / "controllers.log").read_text(errors="replace")[-2000:]
            print(tail, file=sys.stderr)


@pytest.fixture
async def kube(controllers: ApiServer) -> AsyncIterator[Kube]:
    tls = ssl.create_default_context(cafile=str(controllers.ca_cert))
    tls.load_cert_chain(str(controllers.client_cert), str(controllers.client_key))
    async with httpx.AsyncClient(base_url=controllers.url, verify=tls, timeout=60) as http:
        yield Kube(http)


async def _apply_driver(kube: Kube, policy: XPUClusterPolicy) -> None:
    for operand in render_operands(policy, RenderContext(namespace=NAMESPACE)):
        if operand.name == "driver":
            for obj in operand.objects:
                await kube.apply(obj)


async def _until(what: str, check: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(1)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


async def test_a_hundred_kwok_nodes_upgrade_ten_at_a_time(kube: Kube) -> None:
    old = _policy("0.1.0")
    await kube.ensure_namespace(NAMESPACE)
    # The driver runs as the namespace's default account, which no controller makes here.
    sa = {"metadata": {"name": "default"}}
    await kube.create(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts", sa)
    for i in range(NODES):
        node: dict[str, Any] = node_manifest(f"kwok-node-{i}")
        node["spec"] = {}  # untainted: only the driver DaemonSet runs here
        labels = node["metadata"]["labels"]
        labels.update(desired_labels(old.spec, ["driver"], labels))  # type: ignore[arg-type]
        await kube.create("/api/v1/nodes", node)
        # Admission taints a new node not-ready; the node lifecycle controller would lift it
        # (it is left out: on a loaded machine it marks the fake nodes' pods not ready).
        await kube.merge_patch(
            f"/api/v1/nodes/{node['metadata']['name']}", {"spec": {"taints": []}}
        )
    await _apply_driver(kube, old)
    ds_path = f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets"

    async def all_ready() -> bool:
        items = await kube.list_items(ds_path, "app.kubernetes.io/component=driver")
        return bool(items) and all(d.get("status", {}).get("numberReady") == NODES for d in items)

    await _until("the driver pods Ready", all_ready, 60 + NODES * 5)

    new = _policy("0.2.0")
    spec = new.spec.driver.upgrade_policy
    started = time.monotonic()
    await _apply_driver(kube, new)
    passes, most, pass_seconds = 0, 0, 0.0
    while True:
        t0 = time.monotonic()
        status = await reconcile_upgrades(kube, spec, NAMESPACE)
        pass_seconds += time.monotonic() - t0
        passes += 1
        counts = status.counts()
        most = max(most, sum(counts.get(s.value, 0) for s in IN_PROGRESS))
        if counts.get("upgrade-done") == NODES:
            break
        assert time.monotonic() - started < 1500, f"not done: {counts}"
        await asyncio.sleep(0.5)
    total = time.monotonic() - started
    print(
        f"\n{NODES} KWOK nodes, maxParallelUpgrades {PARALLEL}: all upgrade-done in "
        f"{total:.1f}s, {passes} passes, {pass_seconds / passes:.2f}s per pass on average, "
        f"at most {most} nodes upgrading at once",
        file=sys.stderr,
    )
    assert most <= PARALLEL
