"""dcgm-exporter's shape: the DCGM fields as DCGM reads them (through NVML, integers where
DCGM's are), its TYPE lines and labels, in the exporter's text and in its OpenMetrics fallback."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pynvml
import pytest
from nvml.conftest import nvml_env, nvml_lib  # noqa: F401 (fixtures)
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from openxpu_runtime import api
from openxpu_runtime.testing import XpudProcess

from .support import Series, one, parse, select

pytestmark = pytest.mark.integration

MIB = 1 << 20
# dcgm-exporter's default-counters.csv (and DCGM's field types): these are DCGM_FT_INT64.
INTEGER_FIELDS = (
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_TOTAL",
    "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
)  # fmt: skip
COUNTERS = (
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def load(xpud: XpudProcess) -> None:
    """Work and memory on devices 0 and 1, faults on 2 and 3, the device 4 lost (its
    temperature cannot be read); devices 5-7 stay idle."""
    with xpud.client() as c:
        ctx = c.open_context(api.ContextRequest(pid=7, name="load", devices=["0", "1"]))
        c.allocate(ctx.id, "0", 3 * (1 << 30) + 12345)
        c.launch(ctx.id, "1", 1e16)
        c.advance_clock(30)
        c.inject_fault(api.FaultRequest(device="2", code=48))
        c.inject_fault(api.FaultRequest(device="3", code=63))
        c.inject_fault(api.FaultRequest(device="4", code=79))
        c.advance_clock(1)


async def dcgm_exporter(make_exporter: Any, xpud: XpudProcess) -> Any:
    return await make_exporter(
        xpud_socket=xpud.socket, pod_attribution=False, refresh_interval=0, dcgm_compat=True,
        hostname="node-a",
    )  # fmt: skip


@pytest.fixture
def nvml(nvml_lib: Any, nvml_env: pytest.MonkeyPatch, manual_xpud: XpudProcess) -> Iterator[Any]:  # noqa: F811
    nvml_env.setenv("XPUD_SOCKET", str(manual_xpud.socket))
    pynvml.nvmlInit()
    yield pynvml
    pynvml.nvmlShutdown()


async def test_fields_read_as_nvml_reads_them(
    nvml: Any, manual_xpud: XpudProcess, make_exporter: Any
) -> None:
    """Every integer field equals what NVIDIA's own bindings read from our libnvidia-ml at the
    same moment (the manual clock holds readings still), and so does pci_bus_id."""
    load(manual_xpud)
    exporter = await dcgm_exporter(make_exporter, manual_xpud)
    body, _ = await exporter.render()
    series = parse(body.decode())
    compared = 0
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        uuid = nvml.nvmlDeviceGetUUID(h)

        def dcgm(name: str, uuid: str = uuid) -> float:
            return one(series, name, UUID=uuid).value

        bus_id = nvml.nvmlDeviceGetPciInfo(h).busId
        bus_id = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
        assert {s.labels["pci_bus_id"] for s in series if s.labels.get("UUID") == uuid} == {bus_id}
        if i == 4:  # lost: NVML has no reading, and no temperature sample is DCGM's blank
            with pytest.raises(nvml.NVMLError_GpuIsLost):
                nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
            assert not select(series, "DCGM_FI_DEV_GPU_TEMP", UUID=uuid)
            continue
        memory = nvml.nvmlDeviceGetMemoryInfo(h)
        assert dcgm("DCGM_FI_DEV_FB_USED") == memory.used // MIB
        assert dcgm("DCGM_FI_DEV_FB_TOTAL") == memory.total // MIB
        assert dcgm("DCGM_FI_DEV_FB_FREE") == memory.free // MIB
        assert dcgm("DCGM_FI_DEV_GPU_UTIL") == nvml.nvmlDeviceGetUtilizationRates(h).gpu
        assert dcgm("DCGM_FI_DEV_SM_CLOCK") == nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM)
        assert dcgm("DCGM_FI_DEV_MEM_CLOCK") == nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM)
        assert dcgm("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION") == (
            nvml.nvmlDeviceGetTotalEnergyConsumption(h)
        )
        reasons = nvml.nvmlDeviceGetCurrentClocksEventReasons(h)
        assert dcgm("DCGM_FI_DEV_CLOCKS_EVENT_REASONS") == reasons
        assert dcgm("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS") == reasons
        temperature = nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
        assert dcgm("DCGM_FI_DEV_GPU_TEMP") == temperature
        compared += 1
    assert compared == 7
    # The load shows: non-round MiB on device 0, a busy device 1, idle devices read 0.
    assert one(series, "DCGM_FI_DEV_FB_USED", gpu="0").value >= 3 * 1024
    assert one(series, "DCGM_FI_DEV_GPU_UTIL", gpu="1").value > 50
    assert one(series, "DCGM_FI_DEV_GPU_UTIL", gpu="6").value == 0


def sample_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(rf"{name}[{{ ]", line)]


async def test_text_is_shaped_as_dcgm_exporter_writes_it(
    manual_xpud: XpudProcess, make_exporter: Any
) -> None:
    load(manual_xpud)
    exporter = await dcgm_exporter(make_exporter, manual_xpud)
    body, _ = await exporter.render()
    text = body.decode()
    for name in INTEGER_FIELDS:
        lines = sample_lines(text, name)
        assert lines, name
        for line in lines:
            assert re.fullmatch(r"\S+\{.*\} \d+", line), line
    # Power is a double in DCGM, and stays one.
    assert all(
        re.fullmatch(r"\S+\{.*\} \d+\.\d+", line)
        for line in sample_lines(text, "DCGM_FI_DEV_POWER_USAGE")
    )
    types = dict(re.findall(r"^# TYPE (DCGM_\w+) (\w+)$", text, re.MULTILINE))
    assert {name for name, kind in types.items() if kind == "counter"} == set(COUNTERS)
    assert set(types.values()) == {"counter", "gauge"}
    # Every DCGM series carries dcgm-exporter's labels; only the XID one err_code/err_msg.
    dcgm_lines = [line for line in text.splitlines() if line.startswith("DCGM_")]
    for line in dcgm_lines:
        for label in ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname"):
            assert f'{label}="' in line, (label, line)
        assert ('err_code="' in line) == line.startswith("DCGM_FI_DEV_XID_ERRORS{"), line
    xid = sample_lines(text, "DCGM_FI_DEV_XID_ERRORS")
    assert [line for line in xid if 'gpu="2"' in line] == [
        line for line in xid if 'err_code="48",err_msg="Double Bit ECC Error"' in line
    ]
    assert re.search(r'pci_bus_id="00000000:01:02\.0"\} 48$', xid[2])
    # The lost device: no temperature sample, its other fields as before.
    assert not [line for line in sample_lines(text, "DCGM_FI_DEV_GPU_TEMP") if 'gpu="4"' in line]
    assert [line for line in sample_lines(text, "DCGM_FI_DEV_FB_TOTAL") if 'gpu="4"' in line]


def dcgm_values(series: list[Series]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value for s in series if s.name.startswith("DCGM")
    }


async def test_openmetrics_fallback_agrees(manual_xpud: XpudProcess, make_exporter: Any) -> None:
    """A client that takes OpenMetrics only gets prometheus-client's encoder: the same DCGM
    series and values (as floats: `67.0`; OpenMetrics wants _total on a counter's samples,
    so the DCGM counters are `unknown` there)."""
    load(manual_xpud)
    exporter = await dcgm_exporter(make_exporter, manual_xpud)
    text_body, _ = await exporter.render()
    om_body, content_type = await exporter.render(OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    families = list(openmetrics_families(om_body.decode()))
    om = [
        Series(s.name, dict(s.labels), s.value) for f in families for s in f.samples
    ]  # the OpenMetrics parser also checks the body's validity
    text = dcgm_values(parse(text_body.decode()))
    assert len(text) > 8 * 15
    assert dcgm_values(om) == text
    kinds = {f.name: f.type for f in families if f.name.startswith("DCGM")}
    assert {n for n, k in kinds.items() if k == "unknown"} == set(COUNTERS)
