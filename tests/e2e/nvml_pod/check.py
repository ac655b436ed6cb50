"""Runs inside an XPU pod, next to NVIDIA's unmodified pynvml.py (nvidia-ml-py): loads NVML
by its soname, as any NVML tool does, puts a little work and memory on the pod's devices
through OpenXPU's workload API, and prints as JSON what NVML and nvidia-smi report."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pynvml

from openxpu_runtime.smi.reader import XpudReader
from openxpu_runtime.xpu import XpuSession

GIB = 1 << 30
BUSY_WAIT_SECONDS = 20.0


def device(h: Any) -> dict[str, Any]:
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    return {
        "index": pynvml.nvmlDeviceGetIndex(h),
        "name": pynvml.nvmlDeviceGetName(h),
        "uuid": pynvml.nvmlDeviceGetUUID(h),
        "bus_id": pynvml.nvmlDeviceGetPciInfo(h).busId,
        "memory_total": mem.total,
        "memory_used": mem.used,
        "utilization": pynvml.nvmlDeviceGetUtilizationRates(h).gpu,
        "pids": [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)],
    }


def main() -> None:
    socket = Path(os.environ["XPUD_SOCKET"])
    with XpudReader(socket) as xpud:
        scope = xpud.get("/v1/version").get("scope")
    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    with XpuSession(name="nvml-check") as xpu:
        xpu.malloc(GIB, device=1)
        xpu.launch(xpu.get_device_properties(0).peak_ops_per_second * 30, device=0)
        deadline = time.monotonic() + BUSY_WAIT_SECONDS
        while time.monotonic() < deadline and device(handles[0])["utilization"] == 0:
            time.sleep(0.5)
        devices = [device(h) for h in handles]
    maps = Path("/proc/self/maps").read_text().splitlines()
    library = {line.split()[-1] for line in maps if "libnvidia-ml" in line}
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,name,uuid,memory.total", "--format=csv"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = {
        "pid": os.getpid(),
        "visible": os.environ.get("XPU_VISIBLE_DEVICES"),
        "scope": scope,
        "driver_version": pynvml.nvmlSystemGetDriverVersion(),
        "devices": devices,
        "library": sorted(library),
        "smi": {"rc": smi.returncode, "stdout": smi.stdout, "stderr": smi.stderr},
    }
    pynvml.nvmlShutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
