from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openxpu_device_plugin.config import ConfigSource
from openxpu_device_plugin.kubeletapi import pb
from openxpu_device_plugin.plugin import DevicePlugin
from openxpu_device_plugin.registration import REGISTER_TIMEOUT
from openxpu_runtime import api
from openxpu_runtime.testing import XpudProcess

from .kubelet_peer import KubeletPeer


@pytest.fixture
def plugin_dir(short_root: Path) -> Path:
    d = short_root / "dp"
    d.mkdir()
    return d


@pytest.fixture
async def kubelet(plugin_dir: Path) -> AsyncIterator[KubeletPeer]:
    peer = KubeletPeer(plugin_dir)
    await peer.start()
    yield peer
    await peer.stop()


def base_flags(root: Path, plugin_dir: Path) -> dict[str, str | None]:
    return {
        "plugin_dir": str(plugin_dir),
        "xpud_socket": str(root / "run/openxpu/xpud.sock"),
        "cdi_spec_dir": str(root / "var/run/cdi"),
        # Never the host's kubelet: a test that reconciles scopes serves its own here.
        "pod_resources_socket": str(root / "pod-resources.sock"),
    }


StartPlugin = Callable[..., Awaitable[DevicePlugin]]


def scope_dir(container: pb.ContainerAllocateResponse) -> Path:
    """The host directory Allocate mounted at the container's /run/openxpu: its scope's."""
    (host_path,) = [m.host_path for m in container.mounts if m.container_path == "/run/openxpu"]
    return Path(host_path)


def scope_of(xpud: XpudProcess, container: pb.ContainerAllocateResponse) -> api.Scope:
    with xpud.client() as c:
        (scope,) = [s for s in c.scopes() if s.id == scope_dir(container).name]
    return scope


async def eventually(what: str, check: Callable[[], bool], within: float = 30) -> None:
    """Poll `check` until it holds, for at most `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def start_plugin(short_root: Path, plugin_dir: Path) -> AsyncIterator[StartPlugin]:
    """Start the plugin in this event loop: `await start_plugin(file=..., **flags)`."""
    running: list[tuple[DevicePlugin, asyncio.Task[None]]] = []

    async def start(
        file: Path | None = None,
        env: dict[str, str] | None = None,
        register_timeout: float = REGISTER_TIMEOUT,
        **flags: str,
    ) -> DevicePlugin:
        source = ConfigSource(
            file=file, env=env or {}, flags={**base_flags(short_root, plugin_dir), **flags}
        )
        plugin = DevicePlugin(
            source, source.load(), config_poll=0.1, register_timeout=register_timeout
        )
        running.append((plugin, asyncio.create_task(plugin.run())))
        return plugin

    yield start
    for plugin, task in running:
        plugin.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


@pytest.fixture(scope="session")
def apiserver() -> Iterator[Any]:
    """A real etcd + kube-apiserver (the lab's envtest), shared by this package's tests."""
    envtest = pytest.importorskip("openxpu_lab.envtest")
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (the lab installs etcd-server)")
    with envtest.apiserver_only() as api:
        yield api
