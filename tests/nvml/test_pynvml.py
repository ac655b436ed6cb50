"""NVIDIA's nvidia-ml-py (pynvml) against libnvidia-ml.so.1 and a real xpud, checked
against `xpu-smi --json` read at the same moment (the manual clock holds readings still)."""

from __future__ import annotations

import ctypes
import math
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from openxpu_runtime import api
from openxpu_runtime.faults import CATALOG
from openxpu_runtime.profiles import BUILTIN
from openxpu_runtime.testing import XpudProcess

from .conftest import xpu_smi, xpu_smi_json

pytestmark = pytest.mark.integration

SUCCESS, INVALID_ARGUMENT, NOT_SUPPORTED, NOT_FOUND, INSUFFICIENT_SIZE = 0, 2, 3, 6, 7
UNINITIALIZED, TIMEOUT, ARGUMENT_VERSION_MISMATCH = 1, 10, 25
GIB = 1 << 30
PROFILE = BUILTIN["x1-8"]
XID, SBE, DBE = 0x8, 0x1, 0x2
REASONS = {"idle": 0x1, "hw_thermal_slowdown": 0x40, "hw_thermal_shutdown": 0x8}


def half_up(x: float) -> int:
    """NVML's integers from xpud's floats: rounded half away from zero."""
    return math.floor(x + 0.5)


def load(xpud: XpudProcess) -> None:
    """Readings worth comparing: work and memory on devices 2 and 5, an ECC error on 1."""
    with xpud.client() as client:
        ctx = client.open_context(
            api.ContextRequest(pid=os.getpid(), name="nvml-load", devices=["2", "5"])
        )
        client.allocate(ctx.id, "2", 3 * GIB)
        client.allocate(ctx.id, "5", 1 * GIB)
        client.launch(ctx.id, "2", ops=1e16)
        client.advance_clock(60)
        client.inject_fault(api.FaultRequest(device="1", code=63))


def test_every_reading_of_every_device_matches_xpu_smi(
    nvml: Any, manual_xpud8: XpudProcess
) -> None:
    load(manual_xpud8)
    smi = xpu_smi_json(manual_xpud8.socket)
    with manual_xpud8.client() as client:
        inventory = client.inventory().devices
    assert nvml.nvmlDeviceGetCount() == len(smi["devices"]) == 8
    assert nvml.nvmlSystemGetDriverVersion() == smi["driver_version"]
    for d in smi["devices"]:
        i, inv = d["index"], inventory[d["index"]]
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        assert nvml.nvmlDeviceGetIndex(h) == nvml.nvmlDeviceGetMinorNumber(h) == i
        assert nvml.nvmlDeviceGetUUID(h) == d["uuid"]
        assert nvml.nvmlDeviceGetName(h) == inv.product
        pci = nvml.nvmlDeviceGetPciInfo(h)
        for same in (
            nvml.nvmlDeviceGetHandleByUUID(d["uuid"]),
            nvml.nvmlDeviceGetHandleByPciBusId(pci.busId),
            nvml.nvmlDeviceGetHandleByPciBusId(pci.busIdLegacy),
            nvml.nvmlDeviceGetHandleBySerial(nvml.nvmlDeviceGetSerial(h)),
        ):
            assert nvml.nvmlDeviceGetIndex(same) == i

        memory = nvml.nvmlDeviceGetMemoryInfo(h)
        expected = (d["memory_total_bytes"], d["memory_used_bytes"], d["memory_free_bytes"])
        assert (memory.total, memory.used, memory.free) == expected
        memory2 = nvml.nvmlDeviceGetMemoryInfo(h, version=nvml.nvmlMemory_v2)
        assert (memory2.total, memory2.used, memory2.free, memory2.reserved) == (*expected, 0)
        assert nvml.nvmlDeviceGetBAR1MemoryInfo(h).bar1Total == d["memory_total_bytes"]

        assert nvml.nvmlDeviceGetUtilizationRates(h).gpu == half_up(d["utilization_ratio"] * 100)
        temperature = nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
        assert temperature == half_up(d["temperature_celsius"])
        assert nvml.nvmlDeviceGetTemperatureThreshold(
            h, nvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN
        ) == half_up(PROFILE.shutdown_celsius)
        assert nvml.nvmlDeviceGetTemperatureThreshold(
            h, nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
        ) == half_up(PROFILE.slowdown_celsius)

        assert nvml.nvmlDeviceGetPowerUsage(h) == half_up(d["power_watts"] * 1000)
        limit = half_up(d["power_limit_watts"] * 1000)
        assert nvml.nvmlDeviceGetPowerManagementLimit(h) == limit
        assert nvml.nvmlDeviceGetPowerManagementDefaultLimit(h) == limit
        assert nvml.nvmlDeviceGetEnforcedPowerLimit(h) == limit
        assert nvml.nvmlDeviceGetPowerManagementLimitConstraints(h) == [limit, limit]
        assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == half_up(d["energy_joules"] * 1000)

        clock = half_up(d["clock_mhz"])
        assert nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_GRAPHICS) == clock
        assert nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM) == clock
        assert nvml.nvmlDeviceGetClock(h, nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_ID_CURRENT) == clock
        assert nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM) == d["memory_clock_mhz"]
        assert nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_SM) == d["max_clock_mhz"]
        assert nvml.nvmlDeviceGetMaxClockInfo(h, nvml.NVML_CLOCK_MEM) == d["memory_clock_mhz"]
        reasons = sum(REASONS[r] for r in d["throttle_reasons"])
        assert nvml.nvmlDeviceGetCurrentClocksEventReasons(h) == reasons
        assert nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h) == reasons
        busy = "idle" not in d["throttle_reasons"]
        assert nvml.nvmlDeviceGetPerformanceState(h) == (0 if busy else 8)

        assert nvml.nvmlDeviceGetEccMode(h) == [1, 1]
        for error_type, total in ((0, d["ecc_corrected_total"]), (1, d["ecc_uncorrected_total"])):
            for counter in (nvml.NVML_VOLATILE_ECC, nvml.NVML_AGGREGATE_ECC):
                assert nvml.nvmlDeviceGetTotalEccErrors(h, error_type, counter) == total
                assert (
                    nvml.nvmlDeviceGetMemoryErrorCounter(
                        h, error_type, counter, nvml.NVML_MEMORY_LOCATION_DEVICE_MEMORY
                    )
                    == total
                )
        assert nvml.nvmlDeviceGetComputeMode(h) == nvml.NVML_COMPUTEMODE_DEFAULT
        assert nvml.nvmlDeviceGetPersistenceMode(h) == nvml.NVML_FEATURE_ENABLED

        expected_procs = [(p["pid"], p["memory_used_bytes"]) for p in d["processes"]]
        for listing in (
            nvml.nvmlDeviceGetComputeRunningProcesses,
            nvml.nvmlDeviceGetComputeRunningProcesses_v2,
        ):
            assert [(p.pid, p.usedGpuMemory) for p in listing(h)] == expected_procs
        assert nvml.nvmlDeviceGetGraphicsRunningProcesses(h) == []

        assert nvml.nvmlDeviceGetNumaNodeId(h) == inv.numa_node
        for other in inventory:
            level = nvml.nvmlDeviceGetTopologyCommonAncestor(
                h, nvml.nvmlDeviceGetHandleByIndex(other.index)
            )
            if other.index == i:
                assert level == nvml.NVML_TOPOLOGY_INTERNAL
            elif other.link_group == inv.link_group:
                assert level == nvml.NVML_TOPOLOGY_SINGLE
            else:
                assert level == nvml.NVML_TOPOLOGY_SYSTEM  # x1-8: one link group per NUMA node

    # The load is visible, so the comparisons above compared something.
    busy_dev = smi["devices"][2]
    assert nvml.nvmlDeviceGetUtilizationRates(nvml.nvmlDeviceGetHandleByIndex(2)).gpu == 100
    assert busy_dev["memory_used_bytes"] == 3 * GIB
    assert [p["pid"] for p in busy_dev["processes"]] == [os.getpid()]
    assert smi["devices"][1]["ecc_corrected_total"] == 1


def test_system_queries_and_fixed_answers(nvml: Any, manual_xpud8: XpudProcess) -> None:
    load(manual_xpud8)
    driver = xpu_smi_json(manual_xpud8.socket)["driver_version"]
    assert nvml.nvmlSystemGetNVMLVersion() == f"13.{driver}"
    assert (
        nvml.nvmlSystemGetCudaDriverVersion() == nvml.nvmlSystemGetCudaDriverVersion_v2() == 13000
    )
    assert nvml.nvmlSystemGetProcessName(os.getpid()) == "nvml-load"
    with pytest.raises(nvml.NVMLError_NotFound):
        nvml.nvmlSystemGetProcessName(0x7FFF_FFFF)
    assert nvml.nvmlUnitGetCount() == 0
    busy, idle = nvml.nvmlDeviceGetHandleByIndex(2), nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetPowerState(busy) == nvml.nvmlDeviceGetPerformanceState(busy) == 0
    assert nvml.nvmlDeviceGetPowerState(idle) == 8
    assert nvml.nvmlDeviceGetTemperatureV(busy, nvml.NVML_TEMPERATURE_GPU) == (
        nvml.nvmlDeviceGetTemperature(busy, nvml.NVML_TEMPERATURE_GPU)
    )
    max_sm = nvml.nvmlDeviceGetMaxClockInfo(busy, nvml.NVML_CLOCK_SM)
    assert max_sm == PROFILE.max_clock_mhz
    assert nvml.nvmlDeviceGetApplicationsClock(busy, nvml.NVML_CLOCK_SM) == max_sm
    assert nvml.nvmlDeviceGetMaxCustomerBoostClock(busy, nvml.NVML_CLOCK_SM) == max_sm
    assert nvml.nvmlDeviceGetSupportedClocksEventReasons(busy) == 0x1 | 0x8 | 0x40
    assert nvml.nvmlDeviceGetPowerManagementMode(busy) == nvml.NVML_FEATURE_ENABLED
    assert nvml.nvmlDeviceGetNumFans(busy) == 0
    assert nvml.nvmlDeviceIsMigDeviceHandle(busy).value == 0  # pynvml returns the c_uint
    assert nvml.nvmlDeviceGetMPSComputeRunningProcesses(busy) == []
    assert len(nvml.nvmlDeviceGetSerial(busy)) == 13
    pci = nvml.nvmlDeviceGetPciInfo(busy)
    assert (pci.domain, pci.bus, pci.device, pci.busId) == (0, 1, 2, "00000000:01:02.0")
    for i in (0, 4):
        mask = nvml.nvmlDeviceGetMemoryAffinity(nvml.nvmlDeviceGetHandleByIndex(i), 1, 0)
        assert mask[0] == 1 << PROFILE.numa_node_of(i)


def test_cpu_affinity_and_nearest_devices_follow_the_profile(nvml: Any) -> None:
    online = set(range(os.cpu_count() or 1))
    seen: list[set[int]] = []
    for i in (0, 4):  # one device of each NUMA node
        mask = nvml.nvmlDeviceGetCpuAffinity(nvml.nvmlDeviceGetHandleByIndex(i), 4)
        cpus = {w * 64 + b for w, word in enumerate(mask) for b in range(64) if word >> b & 1}
        assert cpus and cpus <= online
        seen.append(cpus)
    # Both nodes' sets are the host's CPUs, split or per host node; never empty.
    assert seen[0] | seen[1] <= online
    near = nvml.nvmlDeviceGetTopologyNearestGpus(
        nvml.nvmlDeviceGetHandleByIndex(1), nvml.NVML_TOPOLOGY_SINGLE
    )
    assert sorted(nvml.nvmlDeviceGetIndex(h) for h in near) == [0, 2, 3]


def wait_event(nvml: Any, event_set: Any) -> tuple[int, int, int]:
    e = nvml.nvmlEventSetWait(event_set, 10_000)
    return e.eventType, e.eventData, nvml.nvmlDeviceGetIndex(e.device)


def inject(xpud: XpudProcess, device: int, code: int) -> None:
    done = xpu_smi(xpud.socket, "inject-fault", "-i", str(device), "--code", str(code))
    assert done.returncode == 0, done.stderr


def test_injected_fault_arrives_as_xid_event(nvml: Any, manual_xpud8: XpudProcess) -> None:
    dev1, dev4 = nvml.nvmlDeviceGetHandleByIndex(1), nvml.nvmlDeviceGetHandleByIndex(4)
    assert nvml.nvmlDeviceGetSupportedEventTypes(dev1) == XID | SBE | DBE
    event_set = nvml.nvmlEventSetCreate()
    try:
        nvml.nvmlDeviceRegisterEvents(dev1, XID | DBE, event_set)
        inject(manual_xpud8, 1, 48)
        assert wait_event(nvml, event_set) == (XID, 48, 1)
        assert wait_event(nvml, event_set) == (DBE, 0, 1)
        # Device 4 is not registered in this set: its fault raises nothing here.
        inject(manual_xpud8, 4, 13)
        with pytest.raises(nvml.NVMLError_Timeout):
            nvml.nvmlEventSetWait(event_set, 300)
        # A device that falls off the bus: XID 79, then its readings say GPU_IS_LOST.
        nvml.nvmlDeviceRegisterEvents(dev4, XID, event_set)
        inject(manual_xpud8, 4, 79)
        assert wait_event(nvml, event_set) == (XID, 79, 4)
        with pytest.raises(nvml.NVMLError_GpuIsLost):
            nvml.nvmlDeviceGetMemoryInfo(dev4)
        with pytest.raises(nvml.NVMLError_GpuIsLost):
            nvml.nvmlDeviceGetTemperature(dev4, nvml.NVML_TEMPERATURE_GPU)
        assert nvml.nvmlDeviceGetUUID(dev4).startswith("XPU-")  # identity stays readable
        assert nvml.nvmlDeviceGetMemoryInfo(dev1).total == PROFILE.memory_bytes
    finally:
        nvml.nvmlEventSetFree(event_set)


def test_every_fault_code_is_its_own_xid(nvml: Any, manual_xpud8: XpudProcess) -> None:
    """The documented mapping: an xpud fault code is the XID number NVML reports."""
    event_set = nvml.nvmlEventSetCreate()
    try:
        for i in range(8):
            nvml.nvmlDeviceRegisterEvents(nvml.nvmlDeviceGetHandleByIndex(i), XID, event_set)
        with manual_xpud8.client() as client:
            for n, code in enumerate(sorted(CATALOG)):
                client.inject_fault(api.FaultRequest(device=str(n % 8), code=code))
                assert wait_event(nvml, event_set) == (XID, code, n % 8)
    finally:
        nvml.nvmlEventSetFree(event_set)


def test_compat_doc_lists_every_fault_code() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs/compat.md").read_text()
    for code, kind in CATALOG.items():
        assert f"| {code} | {kind.name} | {code} |" in doc


UNSUPPORTED: list[tuple[str, tuple[Any, ...]]] = [
    ("nvmlDeviceGetMigMode", ()),
    ("nvmlDeviceGetMaxMigDeviceCount", ()),
    ("nvmlDeviceGetFanSpeed", ()),
    ("nvmlDeviceGetFanSpeed_v2", (0,)),
    ("nvmlDeviceGetVbiosVersion", ()),
    ("nvmlDeviceGetInforomVersion", (0,)),
    ("nvmlDeviceGetBoardPartNumber", ()),
    ("nvmlDeviceGetCudaComputeCapability", ()),
    ("nvmlDeviceGetEncoderUtilization", ()),
    ("nvmlDeviceGetDecoderUtilization", ()),
    ("nvmlDeviceGetPcieThroughput", (0,)),
    ("nvmlDeviceGetCurrPcieLinkGeneration", ()),
    ("nvmlDeviceGetCurrPcieLinkWidth", ()),
    ("nvmlDeviceGetRetiredPages", (0,)),
    ("nvmlDeviceGetRemappedRows", ()),
    ("nvmlDeviceGetNvLinkState", (0,)),
    ("nvmlDeviceGetAccountingMode", ()),
    ("nvmlDeviceGetSupportedMemoryClocks", ()),
    ("nvmlDeviceGetClockInfo", (3,)),  # NVML_CLOCK_VIDEO: no video engine
    ("nvmlDeviceGetTemperatureThreshold", (2,)),  # MEM_MAX: memory temperature not modelled
    ("nvmlDeviceGetMemoryErrorCounter", (0, 0, 1)),  # L2 cache: not modelled
    ("nvmlDeviceSetPersistenceMode", (0,)),
    ("nvmlDeviceSetPowerManagementLimit", (100_000,)),
]


def test_unsupported_calls_raise_not_supported(nvml: Any) -> None:
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    answered = []
    for name, args in UNSUPPORTED:
        try:
            getattr(nvml, name)(handle, *args)
        except nvml.NVMLError_NotSupported:
            continue
        except nvml.NVMLError as exc:
            answered.append(f"{name}: {exc}")
        else:
            answered.append(f"{name}: succeeded")
    assert not answered
    assert nvml.nvmlDeviceGetCount() == 8  # and the library carries on


def test_calls_the_library_lacks_are_function_not_found(nvml: Any) -> None:
    with pytest.raises(nvml.NVMLError_FunctionNotFound):
        nvml.nvmlVgpuTypeGetName(1)


def test_null_pointers_short_buffers_and_bad_handles(
    nvml: Any, nvml_lib: ctypes.CDLL, manual_xpud8: XpudProcess
) -> None:
    lib = nvml_lib
    h, other = ctypes.c_void_p(), ctypes.c_void_p()
    count = ctypes.c_uint()
    buf = ctypes.create_string_buffer(96)
    assert lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h)) == SUCCESS
    assert lib.nvmlDeviceGetHandleByIndex_v2(0, None) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetHandleByIndex_v2(8, ctypes.byref(other)) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetCount_v2(None) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetHandleByUUID(None, ctypes.byref(other)) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetHandleByUUID(b"XPU-none", ctypes.byref(other)) == NOT_FOUND
    assert lib.nvmlDeviceGetName(h, None, 96) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetName(h, buf, 4) == INSUFFICIENT_SIZE
    # A UUID is 40 characters: 40 bytes leave no room for the terminator, 41 do.
    assert lib.nvmlDeviceGetUUID(h, buf, 40) == INSUFFICIENT_SIZE
    assert lib.nvmlDeviceGetUUID(h, buf, 41) == SUCCESS
    assert len(buf.value) == 40
    assert lib.nvmlSystemGetDriverVersion(buf, 1) == INSUFFICIENT_SIZE
    assert lib.nvmlDeviceGetMemoryInfo(h, None) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetTemperature(h, 0, None) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetEccMode(h, ctypes.byref(count), None) == INVALID_ARGUMENT
    memory = (ctypes.c_ulonglong * 5)()
    assert lib.nvmlDeviceGetMemoryInfo(ctypes.c_void_p(0x1234), memory) == INVALID_ARGUMENT
    assert lib.nvmlDeviceGetMemoryInfo(ctypes.c_void_p(h.value + 8), memory) == INVALID_ARGUMENT
    memory[0] = 0x0100_0028  # nvmlMemory_v2's size with version 1
    assert lib.nvmlDeviceGetMemoryInfo_v2(h, memory) == ARGUMENT_VERSION_MISMATCH
    lib.nvmlErrorString.restype = ctypes.c_char_p
    assert lib.nvmlErrorString(15) == b"GPU is lost"

    # Running processes, NVML's two-call protocol, in both struct layouts.
    with manual_xpud8.client() as client:
        ctx = client.open_context(api.ContextRequest(pid=4242, name="held", devices=["0"]))
        client.allocate(ctx.id, "0", GIB)
    threading.Event().wait(0.15)  # past the lifetime of a snapshot taken before the allocation

    class ProcV1(ctypes.Structure):
        _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]

    class ProcV2(ctypes.Structure):
        _fields_ = [*ProcV1._fields_, ("gi", ctypes.c_uint), ("ci", ctypes.c_uint)]

    count.value = 0
    assert lib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(count), None) == (
        INSUFFICIENT_SIZE
    )
    assert count.value == 1
    assert lib.nvmlDeviceGetComputeRunningProcesses_v3(h, ctypes.byref(count), None) == (
        INVALID_ARGUMENT
    )
    v1 = (ProcV1 * 2)()
    count.value = 2
    assert lib.nvmlDeviceGetComputeRunningProcesses(h, ctypes.byref(count), v1) == SUCCESS
    assert (count.value, v1[0].pid, v1[0].usedGpuMemory) == (1, 4242, GIB)
    versions = (
        lib.nvmlDeviceGetComputeRunningProcesses_v2,
        lib.nvmlDeviceGetComputeRunningProcesses_v3,
    )
    for versioned in versions:
        v2 = (ProcV2 * 1)()
        count.value = 1
        assert versioned(h, ctypes.byref(count), v2) == SUCCESS
        assert (v2[0].pid, v2[0].usedGpuMemory, v2[0].gi, v2[0].ci) == (
            4242,
            GIB,
            0xFFFF_FFFF,
            0xFFFF_FFFF,
        )

    event_data = (ctypes.c_ulonglong * 4)()
    assert lib.nvmlEventSetWait_v2(ctypes.c_void_p(0x5678), event_data, 10) == INVALID_ARGUMENT
    event_set = ctypes.c_void_p()
    assert lib.nvmlEventSetCreate(ctypes.byref(event_set)) == SUCCESS
    assert lib.nvmlEventSetWait_v2(event_set, None, 10) == INVALID_ARGUMENT
    assert lib.nvmlEventSetWait_v2(event_set, event_data, 10) == TIMEOUT
    assert lib.nvmlDeviceRegisterEvents(h, ctypes.c_ulonglong(0x10), event_set) == NOT_SUPPORTED
    assert lib.nvmlEventSetFree(event_set) == SUCCESS
    assert lib.nvmlEventSetFree(event_set) == INVALID_ARGUMENT


def test_calls_before_init_are_uninitialized(nvml_lib: ctypes.CDLL) -> None:
    count = ctypes.c_uint()
    assert nvml_lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == UNINITIALIZED
    assert nvml_lib.nvmlDeviceGetVbiosVersion(None, None, 0) == UNINITIALIZED
    assert nvml_lib.nvmlShutdown() == UNINITIALIZED


def test_no_xpud_means_driver_not_loaded(
    nvml_lib: ctypes.CDLL, nvml_env: pytest.MonkeyPatch, short_root: Path
) -> None:
    import pynvml

    nvml_env.setenv("XPUD_SOCKET", str(short_root / "xpud.sock"))
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        pynvml.nvmlInit()


def test_xpud_gone_after_init_is_an_error_not_a_crash(nvml: Any, manual_xpud8: XpudProcess) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    manual_xpud8.stop()
    threading.Event().wait(0.15)  # past the snapshot's lifetime
    with pytest.raises(nvml.NVMLError_Unknown):
        nvml.nvmlDeviceGetMemoryInfo(h)
    assert nvml.nvmlDeviceGetUUID(h).startswith("XPU-")  # what init learned stays


def test_visible_device_variables_choose_and_order_the_view(
    nvml_lib: ctypes.CDLL, nvml_env: pytest.MonkeyPatch, manual_xpud8: XpudProcess
) -> None:
    import pynvml

    uuids = [d["uuid"] for d in xpu_smi_json(manual_xpud8.socket)["devices"]]
    cases: list[tuple[dict[str, str], list[int]]] = [
        ({}, list(range(8))),
        ({"XPU_VISIBLE_DEVICES": "all"}, list(range(8))),
        ({"XPU_VISIBLE_DEVICES": f"{uuids[5]},2"}, [5, 2]),
        ({"XPU_VISIBLE_DEVICES": f"{uuids[4]}::1"}, [4]),  # a shared replica
        ({"XPU_VISIBLE_DEVICES": "none"}, []),
        ({"NVIDIA_VISIBLE_DEVICES": "1,7"}, [1, 7]),
        ({"XPU_VISIBLE_DEVICES": "6", "NVIDIA_VISIBLE_DEVICES": "1"}, [6]),
        ({"XPU_VISIBLE_DEVICES": "0,1,2,3", "CUDA_VISIBLE_DEVICES": "2,0"}, [2, 0]),
        ({"CUDA_VISIBLE_DEVICES": "1,99,0"}, [1]),  # CUDA stops at the first bad entry
        ({"CUDA_VISIBLE_DEVICES": uuids[3][:12]}, [3]),  # a unique UUID prefix
    ]
    nvml_env.setenv("XPUD_SOCKET", str(manual_xpud8.socket))
    for env, expected in cases:
        for name, value in env.items():
            nvml_env.setenv(name, value)
        pynvml.nvmlInit()
        try:
            seen = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                assert pynvml.nvmlDeviceGetIndex(h) == i
                seen.append(pynvml.nvmlDeviceGetMinorNumber(h))
                assert pynvml.nvmlDeviceGetUUID(h) == uuids[seen[-1]]
            assert seen == expected, env
            for hidden in set(range(8)) - set(expected):
                with pytest.raises(pynvml.NVMLError_NotFound):
                    pynvml.nvmlDeviceGetHandleByUUID(uuids[hidden])
        finally:
            pynvml.nvmlShutdown()
            for name in env:
                nvml_env.delenv(name)


def test_concurrent_queries_and_event_waits(nvml: Any, manual_xpud8: XpudProcess) -> None:
    errors: list[BaseException] = []
    event_set = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(nvml.nvmlDeviceGetHandleByIndex(7), XID, event_set)
    got: list[int] = []

    def reader() -> None:
        try:
            for _ in range(200):
                for i in range(8):
                    h = nvml.nvmlDeviceGetHandleByIndex(i)
                    assert nvml.nvmlDeviceGetMemoryInfo(h).total == PROFILE.memory_bytes
                    nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
                    nvml.nvmlDeviceGetUtilizationRates(h)
        except BaseException as exc:
            errors.append(exc)

    def waiter() -> None:
        try:
            got.append(nvml.nvmlEventSetWait(event_set, 20_000).eventData)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(6)]
    threads.append(threading.Thread(target=waiter))
    for t in threads:
        t.start()
    with manual_xpud8.client() as client:
        client.inject_fault(api.FaultRequest(device="7", code=31))
    for t in threads:
        t.join(60)
    nvml.nvmlEventSetFree(event_set)
    assert not errors
    assert got == [31]


def test_events_and_queries_survive_an_xpud_restart(nvml: Any, manual_xpud8: XpudProcess) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(2)
    event_set = nvml.nvmlEventSetCreate()
    try:
        nvml.nvmlDeviceRegisterEvents(h, XID, event_set)
        manual_xpud8.restart()
        # The stream reconnects on its own schedule: inject until one fault is delivered.
        with manual_xpud8.client() as client:
            for _ in range(40):
                client.inject_fault(api.FaultRequest(device="2", code=13))
                try:
                    event = nvml.nvmlEventSetWait(event_set, 250)
                    break
                except nvml.NVMLError_Timeout:
                    continue
            else:
                pytest.fail("no event arrived after xpud restarted")
        assert (event.eventType, event.eventData, nvml.nvmlDeviceGetIndex(event.device)) == (
            XID,
            13,
            2,
        )
        assert nvml.nvmlDeviceGetMemoryInfo(h).total == PROFILE.memory_bytes
    finally:
        nvml.nvmlEventSetFree(event_set)
