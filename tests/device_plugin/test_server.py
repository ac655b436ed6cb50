"""The plugin socket's ownership: a stopping server removes its own socket and nobody else's."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from openxpu_device_plugin.config import ConfigSource
from openxpu_device_plugin.resources import ResourceManager
from openxpu_device_plugin.scopes import SparePool
from openxpu_device_plugin.server import PluginServer
from openxpu_runtime.client import AsyncXpudClient

pytestmark = pytest.mark.integration


def manager() -> ResourceManager:
    return ResourceManager(ConfigSource(env={}).load())


# These servers answer no Allocate: xpud is never called.
NO_XPUD = SparePool(AsyncXpudClient(Path("/nonexistent/xpud.sock")), dict)


async def test_stop_removes_its_own_socket(plugin_dir: Path) -> None:
    path = plugin_dir / "openxpu.io-xpu.sock"
    server = PluginServer(manager(), NO_XPUD, path)
    await server.start()
    assert path.is_socket()
    await server.stop()
    assert not path.exists()
    await server.stop()  # twice is harmless


async def test_stop_leaves_a_newer_servers_socket_alone(plugin_dir: Path) -> None:
    """An old pod stopping after a new pod bound the same path must not remove the new one."""
    path = plugin_dir / "openxpu.io-xpu.sock"
    old = PluginServer(manager(), NO_XPUD, path)
    await old.start()
    new = PluginServer(manager(), NO_XPUD, path)
    await new.start()  # replaces the old socket, as a new pod's plugin does
    try:
        replaced = path.stat().st_ino
        await old.stop()
        assert path.is_socket() and path.stat().st_ino == replaced
        # And it still answers: the listener behind it is the new server's.
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
    finally:
        await new.stop()
    assert not path.exists()


async def test_stop_leaves_a_file_that_replaced_the_socket(plugin_dir: Path) -> None:
    path = plugin_dir / "openxpu.io-xpu.sock"
    server = PluginServer(manager(), NO_XPUD, path)
    await server.start()
    path.unlink()
    path.write_text("someone else's")
    await server.stop()
    assert path.read_text() == "someone else's"
