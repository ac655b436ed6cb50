"""Registering with the kubelet, and noticing when the kubelet restarts.

The kubelet dials the plugin back while it handles Register, so the plugin must already be
serving. A restarted kubelet re-creates `kubelet.sock` and wipes the other sockets in its
directory; either sign means: serve again and re-register.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from grpc import aio

from openxpu_device_plugin.kubeletapi import API_VERSION, pb, rpc
from openxpu_device_plugin.server import OPTIONS

KUBELET_SOCKET = "kubelet.sock"
# Registration is local: a kubelet that takes longer than this is not ready for us.
REGISTER_TIMEOUT = 10.0


async def register(
    plugin_dir: Path, endpoint: str, resource_name: str, wait: float = REGISTER_TIMEOUT
) -> None:
    """Register `endpoint` (a socket name inside `plugin_dir`); raises aio.AioRpcError."""
    async with aio.insecure_channel(f"unix://{plugin_dir / KUBELET_SOCKET}") as channel:
        stub = rpc.RegistrationStub(channel)
        await stub.Register(
            pb.RegisterRequest(
                version=API_VERSION,
                endpoint=endpoint,
                resource_name=resource_name,
                options=OPTIONS,
            ),
            timeout=wait,
            wait_for_ready=True,
        )


@dataclass(frozen=True)
class _Identity:
    dev: int
    ino: int
    ctime_ns: int


def _identity(path: Path) -> _Identity | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _Identity(st.st_dev, st.st_ino, st.st_ctime_ns)


async def wait_for_kubelet_restart(
    plugin_dir: Path, own_socket: Path, interval: float = 0.05
) -> str:
    """Return (with the reason) once kubelet.sock is re-created or our socket vanishes.

    A stat poll: cheap (two syscalls per tick), needs no inotify binding, and keeps the
    re-registration well under a second.
    """
    kubelet = plugin_dir / KUBELET_SOCKET
    first = _identity(kubelet)
    while True:
        await asyncio.sleep(interval)
        now = _identity(kubelet)
        if now is not None and now != first:
            return "kubelet.sock was re-created (kubelet restarted)"
        if now is None and first is not None:
            first = None  # kubelet is down; wait for the new socket
        if _identity(own_socket) is None:
            return f"plugin socket {own_socket} was removed"
