"""NVML in an XPU container: the library talks to its allocation's scope socket (what the
device plugin mounts at /run/openxpu), which serves only the scope's devices, numbered
0..n-1. pynvml there sees exactly those devices, their readings, its own processes and their
faults, whether the plugin names them by UUID or by (the scope's) index."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import pynvml
import pytest

from openxpu_runtime import api
from openxpu_runtime.client import XpudClient
from openxpu_runtime.testing import XpudProcess

from .test_pynvml import DBE, XID, inject, wait_event

pytestmark = pytest.mark.integration
GIB = 1 << 30
HOST_DEVICES = (5, 3)  # the allocation, in the order the kubelet gave it


@pytest.mark.parametrize("named_by", ["uuid", "index", "unset"])
def test_a_scope_shows_nvml_its_devices_only(
    nvml_lib: ctypes.CDLL,
    nvml_env: pytest.MonkeyPatch,
    manual_xpud8: XpudProcess,
    named_by: str,
) -> None:
    with manual_xpud8.client() as admin:
        host = admin.inventory().devices
        scope = admin.create_scope(
            api.ScopeRequest(devices=[api.ScopeDeviceRequest(id=str(i)) for i in HOST_DEVICES])
        )
    assert scope.socket is not None
    visible = {
        "uuid": ",".join(d.uuid for d in scope.devices),
        "index": ",".join(str(d.index) for d in scope.devices),
    }
    if named_by in visible:
        nvml_env.setenv("XPU_VISIBLE_DEVICES", visible[named_by])
    nvml_env.setenv("XPUD_SOCKET", scope.socket)
    nvml_env.setenv("OPENXPU_NVML_CACHE_MS", "0")  # each reading fresh from xpud
    with XpudClient(Path(scope.socket)) as workload:
        ctx = workload.open_context(
            api.ContextRequest(pid=os.getpid(), name="in-pod", devices=["0", "1"])
        )
        workload.allocate(ctx.id, "1", GIB)  # the scope's device 1: host device 3
        pynvml.nvmlInit()
        event_set: Any = None
        try:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(2)]
            assert pynvml.nvmlDeviceGetCount() == 2
            assert [pynvml.nvmlDeviceGetIndex(h) for h in handles] == [0, 1]
            assert [pynvml.nvmlDeviceGetUUID(h) for h in handles] == [
                host[i].uuid for i in HOST_DEVICES
            ]
            # The minor number is the N of the container's /dev/xpuN: the host's, as NVIDIA's.
            assert [pynvml.nvmlDeviceGetMinorNumber(h) for h in handles] == list(HOST_DEVICES)
            # Another allocation's device is not there, by any name.
            with pytest.raises(pynvml.NVMLError_NotFound):
                pynvml.nvmlDeviceGetHandleByUUID(host[0].uuid)
            assert [pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles] == [0, GIB]
            assert [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handles[1])] == [
                os.getpid()
            ]
            # A fault on the host's device 3 is an XID on the scope's device 1.
            event_set = pynvml.nvmlEventSetCreate()
            pynvml.nvmlDeviceRegisterEvents(handles[1], XID | DBE, event_set)
            inject(manual_xpud8, 3, 48)
            assert wait_event(pynvml, event_set) == (XID, 48, 1)
        finally:
            if event_set is not None:
                pynvml.nvmlEventSetFree(event_set)
            pynvml.nvmlShutdown()
            workload.close_context(ctx.id)
