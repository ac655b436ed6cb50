"""The workload API: what a program in a container uses, shaped like the CUDA runtime.

In a container, `XPUD_SOCKET` is the socket of the container's scope: xpud shows it only
the devices it was given, numbered from 0, and holds it to their memory limits whatever
this library sends. On the host (root, the admin socket) the whole node is visible.
Either way, a session uses the devices in `XPU_VISIBLE_DEVICES` (UUIDs or indices as that
socket numbers them), renumbered from 0 like CUDA does, and caps itself further to
`XPU_MEMORY_LIMIT_<i>`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from openxpu_runtime import api
from openxpu_runtime.client import XpudClient
from openxpu_runtime.errors import InvalidArgument, NotFound, XpuError
from openxpu_runtime.paths import default_socket

VISIBLE_ENV = "XPU_VISIBLE_DEVICES"
LIMIT_ENV_PREFIX = "XPU_MEMORY_LIMIT_"
# A crashed workload's memory comes back after this long without a heartbeat.
DEFAULT_LEASE_SECONDS = 30.0
HEARTBEAT_FIRST_RETRY = 0.1

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?)?B?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(text: str) -> int:
    """Bytes from `1073741824`, `1Gi`, `512Mi` or `2G`."""
    match = _SIZE.match(text)
    if not match:
        raise InvalidArgument(f"not a memory size: {text!r} (use bytes or a suffix like 512Mi)")
    return int(match[1]) * _UNITS[(match[2] or "").lower()]


def select_visible(devices: list[api.DeviceInfo], spec: str | None) -> list[api.DeviceInfo]:
    """The devices a process may use, in the order `XPU_VISIBLE_DEVICES` names them."""
    if spec is None or spec.strip().lower() == "all":
        return list(devices)
    if spec.strip().lower() in ("", "none", "void"):
        return []
    by_ref = {d.uuid: d for d in devices} | {str(d.index): d for d in devices}
    chosen: list[api.DeviceInfo] = []
    for ref in (r.strip() for r in spec.split(",")):
        # Shared replicas arrive as `<uuid>::<n>`: the replica is a slice of the device.
        dev = by_ref.get(ref.split("::", 1)[0])
        if dev is None:
            raise NotFound(f"{VISIBLE_ENV} names {ref!r}, which is not a device on this node")
        if dev not in chosen:
            chosen.append(dev)
    return chosen


def memory_limits(env: Mapping[str, str], count: int) -> dict[int, int]:
    limits = {}
    for i in range(count):
        value = env.get(f"{LIMIT_ENV_PREFIX}{i}")
        if value:
            limits[i] = parse_size(value)
    return limits


@dataclass(frozen=True)
class Buffer:
    handle: str
    device: int
    size: int


class XpuSession:
    """One process's context on xpud: `with XpuSession() as xpu: buf = xpu.malloc(1 << 20)`."""

    def __init__(
        self,
        name: str | None = None,
        socket: Path | None = None,
        env: Mapping[str, str] = os.environ,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self._client = XpudClient(socket or default_socket(env))
        self._context: api.Context | None = None
        try:
            self._open(name, env, lease_seconds)
        except BaseException:
            self._client.close()
            raise

    def _open(self, name: str | None, env: Mapping[str, str], lease_seconds: float) -> None:
        self.devices = select_visible(self._client.inventory().devices, env.get(VISIBLE_ENV))
        self.limits = memory_limits(env, len(self.devices))
        if self.devices:
            self._context = self._client.open_context(
                api.ContextRequest(
                    pid=os.getpid(),
                    name=name or Path(sys.argv[0]).name or "python",
                    devices=[d.uuid for d in self.devices],
                    memory_limits={self.devices[i].uuid: n for i, n in self.limits.items()},
                    lease_seconds=lease_seconds,
                )
            )
            self._stop = threading.Event()
            self._beat = threading.Thread(
                target=self._heartbeat, args=(lease_seconds / 3,), daemon=True
            )
            self._beat.start()

    def _heartbeat(self, interval: float) -> None:
        """Keep the lease while the context lives. xpud may be away for a while (a restart,
        a driver upgrade: it keeps contexts across both), so a failed beat is retried, sooner
        at first; only xpud saying the context is gone ends the beat."""
        delay, retry = interval, None
        with XpudClient(self._client.socket) as client:
            while not self._stop.wait(delay):
                try:
                    client.heartbeat(self.context_id)
                except NotFound:
                    return
                except XpuError:
                    retry = HEARTBEAT_FIRST_RETRY if retry is None else min(retry * 2, interval)
                    delay = retry
                else:
                    delay, retry = interval, None

    @property
    def context_id(self) -> str:
        if self._context is None:
            raise NotFound("no XPU is visible to this process")
        return self._context.id

    def close(self) -> None:
        if self._context is not None:
            self._stop.set()
            self._beat.join()
            # NotFound: reaped already (lease expired) or xpud lost its state.
            with contextlib.suppress(NotFound):
                self._client.close_context(self._context.id)
            self._context = None
        self._client.close()

    def __enter__(self) -> XpuSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _device(self, index: int) -> api.DeviceInfo:
        if not 0 <= index < len(self.devices):
            raise InvalidArgument(f"invalid device ordinal {index}: {len(self.devices)} visible")
        return self.devices[index]

    # -- the CUDA-like surface ------------------------------------------------------------

    def device_count(self) -> int:
        return len(self.devices)

    def get_device_properties(self, device: int = 0) -> api.DeviceInfo:
        return self._device(device)

    def mem_get_info(self, device: int = 0) -> tuple[int, int]:
        """(free, total) bytes as this process may use them: its cap or its allocation's
        (a scope reads a shared replica's slice as the device's memory), the lower."""
        info = self._device(device)
        reading = self._client.device(info.uuid)
        limit = self.limits.get(device)
        if limit is None:
            return reading.memory_free_bytes, reading.memory_total_bytes
        used = next(
            (p.memory_used_bytes for p in reading.processes if p.context_id == self.context_id), 0
        )
        return min(limit - used, reading.memory_free_bytes), min(limit, reading.memory_total_bytes)

    def malloc(self, size: int, device: int = 0) -> Buffer:
        alloc = self._client.allocate(self.context_id, self._device(device).uuid, size)
        return Buffer(alloc.handle, device, size)

    def free(self, buffer: Buffer) -> None:
        self._client.free(self.context_id, buffer.handle)

    def launch(self, ops: float, device: int = 0, kind: str = "vector") -> api.LaunchResult:
        return self._client.launch(self.context_id, self._device(device).uuid, ops, kind)

    def synchronize(self, device: int | None = None, poll: float = 0.05) -> None:
        """Block until this process's queued work on the device (or all its devices) is done."""
        uuid = None if device is None else self._device(device).uuid
        while (result := self._client.synchronize(self.context_id, uuid)).pending_ops > 0:
            time.sleep(min(max(result.estimated_seconds, poll), 1.0))
