"""nvidia-smi's csv from xpu-smi and NVIDIA's pynvml through libnvidia-ml.so.1, read from the
same xpud at the same moment (the manual clock holds readings still): one device, two tools,
the same answers — as nvidia-smi and NVML agree on an NVIDIA machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from openxpu_runtime import api
from openxpu_runtime.testing import XpudProcess

from .conftest import xpu_smi

pytestmark = pytest.mark.integration
GIB = 1 << 30
MIB = 1 << 20
# nvidia-smi topo's names for NVML's topology levels.
TOPO = {0: "X", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
ON_OFF = {0: "Disabled", 1: "Enabled"}
FIELDS = (
    "index,name,uuid,serial,pci.bus_id,pci.domain,pci.bus,pci.device,pci.device_id,"
    "memory.total,memory.used,memory.free,utilization.gpu,utilization.memory,"
    "temperature.gpu,power.draw,power.limit,enforced.power.limit,clocks.gr,clocks.sm,"
    "clocks.mem,clocks.max.gr,clocks.max.sm,clocks.max.mem,pstate,"
    "clocks_event_reasons.supported,clocks_event_reasons.active,ecc.mode.current,"
    "ecc.errors.corrected.volatile.total,ecc.errors.uncorrected.aggregate.total,"
    "compute_mode,persistence_mode,fan.speed,mig.mode.current,driver_version,count"
)


def csv(socket: Path, *args: str) -> list[list[str]]:
    done = xpu_smi(socket, *args)
    assert done.returncode == 0, done.stderr
    return [line.split(", ") for line in done.stdout.splitlines()]


def not_supported(nvml: Any, call: Any, *args: Any) -> bool:
    try:
        call(*args)
    except nvml.NVMLError_NotSupported:
        return True
    return False


def test_query_gpu_csv_is_what_nvml_answers(nvml: Any, manual_xpud8: XpudProcess) -> None:
    with manual_xpud8.client() as client:
        ctx = client.open_context(
            api.ContextRequest(pid=os.getpid(), name="csv-load", devices=["2", "6"])
        )
        client.allocate(ctx.id, "2", 3 * GIB)
        client.allocate(ctx.id, "6", 1 * GIB)
        client.launch(ctx.id, "2", ops=1e16)
        client.advance_clock(60)
        client.inject_fault(api.FaultRequest(device="1", code=63))
    rows = csv(manual_xpud8.socket, f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits")
    assert len(rows) == nvml.nvmlDeviceGetCount() == 8
    for row in rows:
        v = dict(zip(FIELDS.split(","), row, strict=True))
        h = nvml.nvmlDeviceGetHandleByIndex(int(v["index"]))
        pci = nvml.nvmlDeviceGetPciInfo(h)
        memory = nvml.nvmlDeviceGetMemoryInfo(h)
        utilization = nvml.nvmlDeviceGetUtilizationRates(h)
        reasons = nvml.nvmlDeviceGetCurrentClocksEventReasons(h)
        supported = nvml.nvmlDeviceGetSupportedClocksEventReasons(h)
        clock = nvml.nvmlDeviceGetClockInfo
        max_clock = nvml.nvmlDeviceGetMaxClockInfo
        expected = {
            "index": str(nvml.nvmlDeviceGetIndex(h)),
            "name": nvml.nvmlDeviceGetName(h),
            "uuid": nvml.nvmlDeviceGetUUID(h),
            "serial": nvml.nvmlDeviceGetSerial(h),
            "pci.bus_id": pci.busId,
            "pci.domain": f"0x{pci.domain:04X}",
            "pci.bus": f"0x{pci.bus:02X}",
            "pci.device": f"0x{pci.device:02X}",
            "pci.device_id": f"0x{pci.pciDeviceId:08X}",
            "memory.total": str(memory.total // MIB),
            "memory.used": str(memory.used // MIB),
            "memory.free": str(memory.free // MIB),
            "utilization.gpu": str(utilization.gpu),
            "utilization.memory": str(utilization.memory),
            "temperature.gpu": str(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
            "power.draw": f"{nvml.nvmlDeviceGetPowerUsage(h) / 1000:.2f}",
            "power.limit": f"{nvml.nvmlDeviceGetPowerManagementLimit(h) / 1000:.2f}",
            "enforced.power.limit": f"{nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000:.2f}",
            "clocks.gr": str(clock(h, nvml.NVML_CLOCK_GRAPHICS)),
            "clocks.sm": str(clock(h, nvml.NVML_CLOCK_SM)),
            "clocks.mem": str(clock(h, nvml.NVML_CLOCK_MEM)),
            "clocks.max.gr": str(max_clock(h, nvml.NVML_CLOCK_GRAPHICS)),
            "clocks.max.sm": str(max_clock(h, nvml.NVML_CLOCK_SM)),
            "clocks.max.mem": str(max_clock(h, nvml.NVML_CLOCK_MEM)),
            "pstate": f"P{nvml.nvmlDeviceGetPerformanceState(h)}",
            "clocks_event_reasons.supported": f"0x{supported:016X}",
            "clocks_event_reasons.active": f"0x{reasons:016X}",
            "ecc.mode.current": ON_OFF[nvml.nvmlDeviceGetEccMode(h)[0]],
            "ecc.errors.corrected.volatile.total": str(
                nvml.nvmlDeviceGetTotalEccErrors(h, 0, nvml.NVML_VOLATILE_ECC)
            ),
            "ecc.errors.uncorrected.aggregate.total": str(
                nvml.nvmlDeviceGetTotalEccErrors(h, 1, nvml.NVML_AGGREGATE_ECC)
            ),
            "compute_mode": {nvml.NVML_COMPUTEMODE_DEFAULT: "Default"}[
                nvml.nvmlDeviceGetComputeMode(h)
            ],
            "persistence_mode": ON_OFF[nvml.nvmlDeviceGetPersistenceMode(h)],
            "driver_version": nvml.nvmlSystemGetDriverVersion(),
            "count": str(nvml.nvmlDeviceGetCount()),
        }
        assert {k: v[k] for k in expected} == expected
        # What NVML does not support, nvidia-smi prints as [N/A].
        assert not_supported(nvml, nvml.nvmlDeviceGetFanSpeed, h) and v["fan.speed"] == "[N/A]"
        assert not_supported(nvml, nvml.nvmlDeviceGetMigMode, h)
        assert v["mig.mode.current"] == "[N/A]"
    # The load shows, so the comparison compared something.
    assert rows[2][10] == "3072" and rows[2][12] == "100" and rows[6][10] == "1024"
    assert rows[1][28] == "1"


def test_compute_apps_and_selection_match_nvml(nvml: Any, manual_xpud8: XpudProcess) -> None:
    with manual_xpud8.client() as client:
        ctx = client.open_context(
            api.ContextRequest(pid=os.getpid(), name="csv-apps", devices=["3"])
        )
        client.allocate(ctx.id, "3", 2 * GIB)
    apps = csv(
        manual_xpud8.socket,
        "--query-compute-apps=gpu_uuid,gpu_bus_id,pid,used_memory",
        "--format=csv,noheader,nounits",
    )
    h = nvml.nvmlDeviceGetHandleByIndex(3)
    [proc] = nvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert apps == [
        [
            nvml.nvmlDeviceGetUUID(h),
            nvml.nvmlDeviceGetPciInfo(h).busId,
            str(proc.pid),
            str(proc.usedGpuMemory // MIB),
        ]
    ]
    # -i by serial and by bus id picks the device NVML finds by the same key.
    serial = nvml.nvmlDeviceGetSerial(nvml.nvmlDeviceGetHandleByIndex(6))
    bus = nvml.nvmlDeviceGetPciInfo(nvml.nvmlDeviceGetHandleByIndex(4)).busIdLegacy
    chosen = csv(
        manual_xpud8.socket, "-i", f"{serial},{bus}", "--query-gpu=index", "--format=csv,noheader"
    )
    found = [nvml.nvmlDeviceGetHandleBySerial(serial), nvml.nvmlDeviceGetHandleByPciBusId(bus)]
    assert chosen == [[str(i)] for i in sorted(nvml.nvmlDeviceGetIndex(f) for f in found)]


def test_topo_matrix_is_nvmls_topology(nvml: Any, manual_xpud8: XpudProcess) -> None:
    lines = xpu_smi(manual_xpud8.socket, "topo", "-m").stdout.splitlines()
    count = nvml.nvmlDeviceGetCount()
    for i, line in enumerate(lines[1 : 1 + count]):
        cells = line.split("\t")
        a = nvml.nvmlDeviceGetHandleByIndex(i)
        for j in range(count):
            b = nvml.nvmlDeviceGetHandleByIndex(j)
            assert cells[1 + j].strip() == TOPO[nvml.nvmlDeviceGetTopologyCommonAncestor(a, b)]
        mask = nvml.nvmlDeviceGetCpuAffinity(a, 4)
        cpus = [w * 64 + b for w, word in enumerate(mask) for b in range(64) if word >> b & 1]
        listed: list[int] = []
        for part in cells[1 + count].split(","):
            lo, _, hi = part.partition("-")
            listed.extend(range(int(lo), int(hi or lo) + 1))
        assert listed == cpus
        assert cells[2 + count] == str(nvml.nvmlDeviceGetNumaNodeId(a))
