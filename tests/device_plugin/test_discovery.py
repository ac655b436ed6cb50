"""Feature discovery against a real kube-apiserver (the lab's apiserver-only mode) and a real
xpud: labels appear, follow config changes, leave others' labels alone, and go away when the
node has no XPUs any more."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from openxpu_device_plugin.config import ConfigSource
from openxpu_device_plugin.discovery import FeatureDiscovery
from openxpu_device_plugin.kube import KubeClient, NodeName, from_kubeconfig
from openxpu_runtime.testing import XpudProcess

pytestmark = [
    pytest.mark.integration,
    # The lab starts etcd/kube-apiserver detached and drops their Popen objects on purpose
    # (they outlive the call), which Python reports as a ResourceWarning.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

envtest = pytest.importorskip("openxpu_lab.envtest")
NODE = NodeName("node-a")


@pytest.fixture(scope="module")
def apiserver() -> Iterator[object]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (the lab installs etcd-server)")
    with envtest.apiserver_only() as api:
        yield api


@pytest.fixture
async def kube(apiserver: object) -> AsyncIterator[KubeClient]:
    creds = from_kubeconfig(apiserver.kubeconfig)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=creds.server, verify=creds.ssl) as http:
        await http.delete(f"/api/v1/nodes/{NODE}")
        r = await http.post(
            "/api/v1/nodes",
            json={
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": NODE,
                    "labels": {"keep": "me", "openxpu.io/xpu.present": "true"},
                },
            },
        )
        assert r.status_code == 201, r.text
    client = KubeClient(creds)
    yield client
    await client.aclose()


async def node_labels(kube: KubeClient) -> dict[str, str]:
    return (await kube.get_node(NODE)).get("metadata", {}).get("labels", {})


async def wait_labels(kube: KubeClient, check: object, within: float = 15.0) -> dict[str, str]:
    async with asyncio.timeout(within):
        while True:
            got = await node_labels(kube)
            if check(got):  # type: ignore[operator]
                return got
            await asyncio.sleep(0.1)


async def test_labels_follow_devices_and_config(
    kube: KubeClient, xpud: XpudProcess, short_root: Path
) -> None:
    config = short_root / "fd.yaml"
    config.write_text(f"version: v1\nflags:\n  xpudSocket: {xpud.socket}\n")
    source = ConfigSource(file=config, env={})
    fd = FeatureDiscovery(source, source.load(), kube, NODE, interval=60, config_poll=0.1)
    patch = await fd.label_once()
    labels = await node_labels(kube)
    assert labels["openxpu.io/xpu.count"] == "8"
    assert labels["openxpu.io/xpu.family"]
    assert labels["openxpu.io/xpu.product"]
    assert int(labels["openxpu.io/xpu.memory"]) > 0
    assert labels["openxpu.io/xpu.sharing-strategy"] == "none"
    assert labels["openxpu.io/driver.version"]
    assert labels["keep"] == "me" and labels["openxpu.io/xpu.present"] == "true"
    assert set(patch) == {k for k in labels if k.startswith("openxpu.io/") and "present" not in k}
    assert await fd.label_once() == {}  # current: no write

    task = asyncio.create_task(fd.run())
    try:
        config.write_text(
            f"version: v1\nflags:\n  xpudSocket: {xpud.socket}\n"
            "sharing:\n  timeSlicing:\n    replicas: 3\n"
        )
        await wait_labels(kube, lambda got: got.get("openxpu.io/xpu.replicas") == "3")
        # The driver comes back with no devices: our labels go, others' stay.
        xpud.stop()
        empty = XpudProcess(short_root, "--profile", "x1-2", "--count", "0", "--reset-state")
        await asyncio.to_thread(empty.start)
        try:
            got = await wait_labels(kube, lambda got: "openxpu.io/xpu.count" not in got)
            assert not any(k.startswith("openxpu.io/xpu.") and "present" not in k for k in got)
            assert "openxpu.io/driver.version" not in got
            assert got["keep"] == "me" and got["openxpu.io/xpu.present"] == "true"
        finally:
            empty.stop()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
