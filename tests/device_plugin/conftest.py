from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openxpu_device_plugin.config import ConfigSource
from openxpu_device_plugin.plugin import DevicePlugin
from openxpu_device_plugin.registration import REGISTER_TIMEOUT

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
