"""Feature discovery against a real kube-apiserver (the lab's apiserver-only mode) and a real
xpud: labels appear, follow config changes, leave others' labels alone, go away when the
node has no XPUs any more, and an API server restart under it is waited out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client

from openxpu_device_plugin.config import ConfigSource
from openxpu_device_plugin.discovery import FeatureDiscovery
from openxpu_device_plugin.kube import KubeClient, KubeError, NodeName, configure
from openxpu_runtime.testing import XpudProcess

pytestmark = [
    pytest.mark.integration,
    # The lab starts etcd/kube-apiserver detached and drops their Popen objects on purpose
    # (they outlive the call), which Python reports as a ResourceWarning.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

NODE = NodeName("node-a")


@pytest.fixture
async def kube(apiserver: Any) -> AsyncIterator[KubeClient]:
    configuration = await configure(str(apiserver.kubeconfig))
    async with client.ApiClient(configuration) as api:
        core = client.CoreV1Api(api)
        with contextlib.suppress(client.ApiException):
            await core.delete_node(NODE)
        await core.create_node(
            client.V1Node(
                metadata=client.V1ObjectMeta(
                    name=NODE, labels={"keep": "me", "openxpu.io/xpu.present": "true"}
                )
            )
        )
    kube = KubeClient(configuration)
    yield kube
    await kube.aclose()


async def node_labels(kube: KubeClient) -> dict[str, str]:
    return await kube.node_labels(NODE)


async def wait_labels(kube: KubeClient, check: object, within: float = 15.0) -> dict[str, str]:
    async with asyncio.timeout(within):
        while True:
            with contextlib.suppress(KubeError):  # the API server may be coming back
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


async def test_survives_an_api_server_restart_and_relabels(
    kube: KubeClient,
    apiserver: Any,
    xpud: XpudProcess,
    short_root: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A control-plane restart is an outage to wait out, not a reason to exit."""
    procs = pytest.importorskip("openxpu_lab.procs")
    config = short_root / "fd.yaml"
    config.write_text(f"version: v1\nflags:\n  xpudSocket: {xpud.socket}\n")
    source = ConfigSource(file=config, env={})
    fd = FeatureDiscovery(source, source.load(), kube, NODE, interval=0.2, config_poll=0.1)
    task = asyncio.create_task(fd.run())
    pids, logs = apiserver.state_dir / "pids", apiserver.state_dir / "logs"
    try:
        await wait_labels(kube, lambda got: got.get("openxpu.io/xpu.count") == "8")
        argv = procs.read("kube-apiserver", pids)["argv"]
        caplog.clear()
        with caplog.at_level(logging.ERROR, "openxpu_device_plugin"):
            await asyncio.to_thread(procs.stop, "kube-apiserver", pids)
            # Edit the config while the API server is away: the labels must follow once
            # it is back.
            config.write_text(
                f"version: v1\nflags:\n  xpudSocket: {xpud.socket}\n"
                "sharing:\n  timeSlicing:\n    replicas: 2\n"
            )
            await asyncio.sleep(2)  # several passes at a 0.2 s interval, all failing
            assert not task.done(), task
            assert any("cannot reach the API server" in r.getMessage() for r in caplog.records)
            await asyncio.to_thread(procs.start, "kube-apiserver", argv, pids, logs)
            got = await wait_labels(
                kube, lambda got: got.get("openxpu.io/xpu.replicas") == "2", within=90
            )
        assert got["openxpu.io/xpu.sharing-strategy"] == "time-slicing"
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
