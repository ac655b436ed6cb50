"""The exporter against a real xpud: values, units, faults, and losing xpud."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from openxpu_runtime import api
from openxpu_runtime.testing import XpudProcess

from .support import Series, SkewedXpud, free_port, one, parse, running_exporter, select

pytestmark = pytest.mark.integration

MIB = 1 << 20


async def scrape(exporter: Any) -> list[Series]:
    body, _ = await exporter.render()
    return parse(body.decode())


def xpu_smi_json(socket: Path) -> api.Telemetry:
    out = subprocess.run(
        [sys.executable, "-c", "from openxpu_runtime.smi import main; raise SystemExit(main())",
         "--json"],
        env={**os.environ, "XPUD_SOCKET": str(socket)},
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return api.Telemetry.model_validate(json.loads(out))


@pytest.fixture
def loaded_xpud(short_root: Path) -> Any:
    """A real-time xpud with xpu-burn holding memory and running 80% on devices 0 and 1."""
    proc = XpudProcess(short_root / "host", "--profile", "x1-8", "--tick", "0.25").start()
    burn = subprocess.Popen(
        [sys.executable, "-m", "openxpu_runtime.samples.burn", "--duration", "60",
         "--utilization", "0.8", "--memory", "1Gi"],
        env={**os.environ, "XPUD_SOCKET": str(proc.socket), "XPU_VISIBLE_DEVICES": "0,1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with proc.client() as c:
            deadline = time.monotonic() + 30
            while c.telemetry().devices[0].utilization_ratio < 0.6:
                assert time.monotonic() < deadline, "xpu-burn did not load device 0"
                assert burn.poll() is None, "xpu-burn exited early"
                time.sleep(0.25)
        yield proc
    finally:
        burn.terminate()
        burn.wait(10)
        proc.stop()


async def test_values_match_xpu_smi_under_load(
    loaded_xpud: XpudProcess, make_exporter: Any
) -> None:
    exporter = await make_exporter(
        xpud_socket=loaded_xpud.socket, pod_attribution=False, refresh_interval=0,
        dcgm_compat=True, hostname="node-a",
    )  # fmt: skip
    before = await scrape(exporter)
    smi = xpu_smi_json(loaded_xpud.socket)
    series = await scrape(exporter)
    assert len(select(series, "openxpu_utilization_ratio")) == len(smi.devices) == 8
    for d in smi.devices:

        def native(name: str, d: api.DeviceTelemetry = d) -> float:
            return one(series, name, uuid=d.uuid).value

        def dcgm(name: str, d: api.DeviceTelemetry = d) -> float:
            return one(series, name, UUID=d.uuid).value

        # The two reads are a few ms apart on a 0.25 s tick: memory and limits are exact,
        # readings that move with load get a tolerance.
        assert native("openxpu_memory_used_bytes") == d.memory_used_bytes
        assert native("openxpu_memory_free_bytes") == d.memory_free_bytes
        assert native("openxpu_memory_total_bytes") == d.memory_total_bytes
        assert native("openxpu_utilization_ratio") == pytest.approx(d.utilization_ratio, abs=0.1)
        assert native("openxpu_matrix_utilization_ratio") == pytest.approx(
            d.matrix_utilization_ratio, abs=0.1
        )
        assert native("openxpu_power_watts") == pytest.approx(d.power_watts, rel=0.1)
        assert native("openxpu_power_limit_watts") == d.power_limit_watts
        assert native("openxpu_temperature_celsius") == pytest.approx(
            d.temperature_celsius, abs=1.5
        )
        # Energy keeps counting between the reads: xpu-smi's reading lies between two scrapes.
        energy = "openxpu_energy_joules_total"
        assert one(before, energy, uuid=d.uuid).value <= d.energy_joules <= native(energy)
        assert native("openxpu_clock_hertz") == pytest.approx(d.clock_mhz * 1e6, rel=0.01)
        assert native("openxpu_clock_max_hertz") == d.max_clock_mhz * 1e6
        assert native("openxpu_memory_clock_hertz") == d.memory_clock_mhz * 1e6
        assert one(series, "openxpu_health_state", uuid=d.uuid, state=d.health).value == 1
        labels = one(series, "openxpu_utilization_ratio", uuid=d.uuid).labels
        assert labels == {"xpu": str(d.index), "uuid": d.uuid, "model": "OpenXPU X1 64GB",
                          "hostname": "node-a"}  # fmt: skip
        # The same readings in dcgm-exporter's units.
        # MiB as DCGM computes it; the integer fields parse as ints (no decimal point).
        assert dcgm("DCGM_FI_DEV_FB_USED") == d.memory_used_bytes // MIB
        assert dcgm("DCGM_FI_DEV_FB_FREE") == d.memory_free_bytes // MIB
        assert dcgm("DCGM_FI_DEV_FB_TOTAL") == d.memory_total_bytes // MIB
        assert dcgm("DCGM_FI_DEV_GPU_UTIL") == pytest.approx(d.utilization_ratio * 100, abs=10)
        for name in ("FB_USED", "GPU_UTIL", "GPU_TEMP", "SM_CLOCK", "TOTAL_ENERGY_CONSUMPTION"):
            assert type(dcgm(f"DCGM_FI_DEV_{name}")) is int, name
        assert dcgm("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE") == pytest.approx(
            d.matrix_utilization_ratio, abs=0.1
        )
        assert dcgm("DCGM_FI_DEV_POWER_USAGE") == pytest.approx(d.power_watts, rel=0.1)
        assert dcgm("DCGM_FI_DEV_GPU_TEMP") == pytest.approx(d.temperature_celsius, abs=1.5)
        assert dcgm("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION") == int(native(energy) * 1000 + 0.5)
        assert dcgm("DCGM_FI_DEV_SM_CLOCK") == pytest.approx(d.clock_mhz, rel=0.01)
        assert dcgm("DCGM_FI_DEV_MEM_CLOCK") == d.memory_clock_mhz
        assert one(series, "DCGM_FI_DEV_SM_CLOCK", UUID=d.uuid).labels | {} == {
            "gpu": str(d.index), "UUID": d.uuid, "device": f"xpu{d.index}",
            "pci_bus_id": f"00000000:01:{d.index:02X}.0",
            "modelName": "OpenXPU X1 64GB", "Hostname": "node-a",
            "DCGM_FI_DRIVER_VERSION": smi.driver_version,
        }  # fmt: skip
    # The load is visible: the burned devices are busy and hold xpu-burn's memory.
    busy = {d.index for d in smi.devices if d.utilization_ratio > 0.5}
    assert busy == {0, 1}
    procs = select(series, "openxpu_process_memory_used_bytes")
    assert {(p.labels["xpu"], p.labels["process"], p.value) for p in procs} == {
        ("0", "xpu-burn", 1 << 30), ("1", "xpu-burn", 1 << 30)
    }  # fmt: skip
    assert one(series, "openxpu_driver_info").labels["driver_version"] == smi.driver_version


async def test_faults_show_up(manual_xpud: XpudProcess, make_exporter: Any) -> None:
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, pod_attribution=False, refresh_interval=0,
        dcgm_compat=True,
    )  # fmt: skip
    with manual_xpud.client() as c:
        uuids = [d.uuid for d in c.telemetry().devices]
        series = await scrape(exporter)
        assert not select(series, "openxpu_errors_total")
        assert one(series, "openxpu_clock_throttle_active", uuid=uuids[1],
                   reason="hw_thermal_slowdown").value == 0  # fmt: skip
        c.inject_fault(api.FaultRequest(device="0", code=48))
        c.inject_fault(api.FaultRequest(device="1", code=140))
        c.inject_fault(api.FaultRequest(device="2", code=63))
        c.inject_fault(api.FaultRequest(device="2", code=63))
        c.advance_clock(5)
        series = await scrape(exporter)
    assert one(series, "openxpu_health_state", uuid=uuids[0], state="Unhealthy").value == 1
    assert one(series, "openxpu_health_state", uuid=uuids[0], state="Healthy").value == 0
    assert one(series, "openxpu_errors_total", uuid=uuids[0], code="48").labels["name"] == "ECC_DBE"
    assert one(series, "openxpu_ecc_uncorrected_errors_total", uuid=uuids[0]).value == 1
    assert one(series, "openxpu_last_error_code", uuid=uuids[0]).value == 48
    assert one(series, "DCGM_FI_DEV_XID_ERRORS", UUID=uuids[0]).value == 48
    assert one(series, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", UUID=uuids[0]).value == 1
    fault = one(series, "openxpu_fault_active", uuid=uuids[0])
    assert (fault.labels["code"], fault.labels["severity"]) == ("48", "unhealthy")
    assert one(series, "openxpu_clock_throttle_active", uuid=uuids[1],
               reason="hw_thermal_slowdown").value == 1  # fmt: skip
    # Both names of the throttle bitmask: HwThermalSlowdown (0x40) is set.
    for name in ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"):
        assert int(one(series, name, UUID=uuids[1]).value) & 0x40, name
    xid = one(series, "DCGM_FI_DEV_XID_ERRORS", UUID=uuids[0]).labels
    assert (xid["err_code"], xid["err_msg"]) == ("48", "Double Bit ECC Error")
    quiet = one(series, "DCGM_FI_DEV_XID_ERRORS", UUID=uuids[3])
    assert (quiet.value, quiet.labels["err_code"], quiet.labels["err_msg"]) == (0, "0", "No Error")
    assert one(series, "openxpu_errors_total", uuid=uuids[2], code="63").value == 2
    assert one(series, "openxpu_ecc_corrected_errors_total", uuid=uuids[2]).value == 2
    assert one(series, "openxpu_health_state", uuid=uuids[2], state="Healthy").value == 1


async def test_losing_xpud_withholds_device_metrics(
    manual_xpud: XpudProcess, make_exporter: Any
) -> None:
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, pod_attribution=False, refresh_interval=0
    )
    assert one(await scrape(exporter), "openxpu_exporter_xpud_up").value == 1
    manual_xpud.stop()
    series = await scrape(exporter)
    assert one(series, "openxpu_exporter_xpud_up").value == 0
    assert not select(series, "openxpu_utilization_ratio")
    assert one(series, "openxpu_exporter_read_errors_total", source="xpud").value == 1
    assert exporter.state.ready  # stays in its Service, so Prometheus sees the 0 above
    manual_xpud.start()
    series = await scrape(exporter)
    assert one(series, "openxpu_exporter_xpud_up").value == 1
    assert len(select(series, "openxpu_utilization_ratio")) == 8


def allocation_seen(series: list[Series]) -> bool:
    """The 5 MiB the tests allocate on device 3."""
    return one(series, "openxpu_memory_used_bytes", xpu="3").value == 5 * MIB


async def eventually(exporter: Any, check: Any, what: str) -> None:
    """Scrape until `check(series)` holds, for up to 5 s."""
    deadline = time.monotonic() + 5
    while not check(await scrape(exporter)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_an_answer_it_cannot_read_is_xpud_down_until_it_can(
    short_root: Path, make_exporter: Any
) -> None:
    """Version skew: a newer xpud's telemetry the client cannot parse must not leave the last
    snapshot on show with xpud_up 1; the background loop goes on and recovers."""
    xpud = SkewedXpud(short_root / "host", "--profile", "x1-8", "--clock", "manual").start()
    try:
        exporter = await make_exporter(
            xpud_socket=xpud.socket, pod_attribution=False, refresh_interval=0.1
        )
        assert one(await scrape(exporter), "openxpu_exporter_xpud_up").value == 1
        xpud.skew.touch()

        def down(series: list[Series]) -> bool:
            return one(series, "openxpu_exporter_xpud_up").value == 0

        await eventually(exporter, down, "xpud_up 0 while xpud's answer is unreadable")
        series = await scrape(exporter)
        assert not select(series, "openxpu_utilization_ratio")
        assert one(series, "openxpu_exporter_read_errors_total", source="xpud").value >= 1
        xpud.skew.unlink()
        await eventually(exporter, lambda s: not down(s), "xpud_up 1 once it reads again")
        assert len(select(await scrape(exporter), "openxpu_utilization_ratio")) == 8
    finally:
        xpud.stop()


async def test_a_background_loop_that_ends_is_started_again(
    manual_xpud: XpudProcess, make_exporter: Any
) -> None:
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, pod_attribution=False, refresh_interval=0.1
    )
    for task in list(exporter._tasks):  # ended from outside, as no loop of ours ends itself
        task.cancel()
    await asyncio.sleep(0.01)
    with manual_xpud.client() as c:
        ctx = c.open_context(api.ContextRequest(pid=1, name="t", devices=["3"]))
        c.allocate(ctx.id, "3", 5 * MIB)

    await eventually(exporter, allocation_seen, "the restarted loop to read the allocation")


async def test_process_series_stay_bounded_as_processes_come_and_go(
    manual_xpud: XpudProcess, make_exporter: Any
) -> None:
    """Per-process memory is labelled by process name: 40 short-lived workers (each a new
    pid and context) make one series, not 40 that Prometheus keeps for its retention."""
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, pod_attribution=False, refresh_interval=0
    )
    seen: set[tuple[tuple[str, str], ...]] = set()
    with manual_xpud.client() as c:
        resident = c.open_context(api.ContextRequest(pid=10, name="trainer", devices=["2"]))
        c.allocate(resident.id, "2", 3 * MIB)
        for pid in range(1000, 1040):
            ctx = c.open_context(api.ContextRequest(pid=pid, name="worker", devices=["2"]))
            c.allocate(ctx.id, "2", MIB)
            peer = c.open_context(api.ContextRequest(pid=pid + 1, name="worker", devices=["2"]))
            c.allocate(peer.id, "2", MIB)
            procs = select(await scrape(exporter), "openxpu_process_memory_used_bytes")
            seen |= {tuple(sorted(p.labels.items())) for p in procs}
            c.close_context(ctx.id)
            c.close_context(peer.id)
    assert len(seen) == 2, sorted(seen)
    assert all("pid" not in dict(labels) and "context_id" not in dict(labels) for labels in seen)
    # Two workers at once: one series holding both.
    assert {p.labels["process"]: p.value for p in procs} == {"trainer": 3 * MIB, "worker": 2 * MIB}


def test_devices_endpoint_names_no_processes(manual_xpud: XpudProcess, short_root: Path) -> None:
    """/devices answers anyone who reaches the pod: no tenant's process names or pids."""
    with manual_xpud.client() as c:
        ctx = c.open_context(api.ContextRequest(pid=48213, name="tenant-job-x", devices=["1"]))
        c.allocate(ctx.id, "1", MIB)
    with running_exporter(
        "--xpud-socket", str(manual_xpud.socket), "--no-pod-attribution",
        log=short_root / "exporter.log",
    ) as exporter:  # fmt: skip
        r = httpx.get(f"{exporter.url}/devices")
    device = r.json()["devices"][1]
    assert device["memory_used_bytes"] == MIB  # the device's own readings stay
    assert "processes" not in device
    assert "tenant-job-x" not in r.text and "48213" not in r.text


async def test_metric_set_is_configurable(manual_xpud: XpudProcess, make_exporter: Any) -> None:
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, pod_attribution=False, refresh_interval=0,
        native=False, dcgm_compat=True,
        disabled_metrics=frozenset({"DCGM_FI_DEV_MEM_CLOCK"}),
    )  # fmt: skip
    names = {s.name for s in await scrape(exporter)}
    assert "DCGM_FI_DEV_GPU_UTIL" in names and "DCGM_FI_DEV_MEM_CLOCK" not in names
    assert not {n for n in names if n.startswith("openxpu_") and "exporter" not in n}
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, pod_attribution=False, refresh_interval=0,
        disabled_metrics=frozenset({"openxpu_errors_total", "openxpu_power_watts"}),
    )  # fmt: skip
    names = {s.name for s in await scrape(exporter)}
    assert "openxpu_power_watts" not in names and "openxpu_temperature_celsius" in names
    assert not {n for n in names if n.startswith("DCGM_")}


async def test_cached_snapshot_refreshes_in_the_background(
    manual_xpud: XpudProcess, make_exporter: Any
) -> None:
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, pod_attribution=False, refresh_interval=0.1
    )
    with manual_xpud.client() as c:
        ctx = c.open_context(api.ContextRequest(pid=1, name="t", devices=["3"]))
        c.allocate(ctx.id, "3", 5 * MIB)
    await eventually(exporter, allocation_seen, "the allocation in a background read")
    age = one(await scrape(exporter), "openxpu_exporter_snapshot_age_seconds").value
    assert 0 <= age < 1


def test_http_endpoints(manual_xpud: XpudProcess, short_root: Path) -> None:
    with running_exporter(
        "--xpud-socket", str(manual_xpud.socket), "--no-pod-attribution",
        log=short_root / "exporter.log",
    ) as exporter:  # fmt: skip
        assert httpx.get(f"{exporter.url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{exporter.url}/readyz")
        assert ready.status_code == 200 and ready.json()["xpud_up"] is True
        devices = httpx.get(f"{exporter.url}/devices").json()["devices"]
        assert [d["index"] for d in devices] == list(range(8))
        assert devices[0]["model"] == "OpenXPU X1 64GB" and devices[0]["pods"] == []
        r = httpx.get(f"{exporter.url}/metrics")
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        series = parse(r.text)
        assert one(series, "openxpu_exporter_xpud_up").value == 1
        assert select(series, "process_resident_memory_bytes")
        om = httpx.get(
            f"{exporter.url}/metrics",
            headers={"accept": "application/openmetrics-text; version=1.0.0"},
        )
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.rstrip().endswith("# EOF")
        assert httpx.get(f"{exporter.url}/nope").status_code == 404


def test_not_ready_until_xpud_answers(short_root: Path) -> None:
    with running_exporter(
        "--xpud-socket", str(short_root / "none.sock"), "--no-pod-attribution",
        log=short_root / "exporter.log", wait_ready=False,
    ) as exporter:  # fmt: skip
        assert httpx.get(f"{exporter.url}/healthz").status_code == 200
        assert httpx.get(f"{exporter.url}/readyz").status_code == 503
        assert httpx.get(f"{exporter.url}/devices").status_code == 503
        series = exporter.metrics()
        assert one(series, "openxpu_exporter_xpud_up").value == 0


def test_cli_help_and_bad_settings(short_root: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "openxpu_exporter.cli", *args],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    out = run("--help")
    assert out.returncode == 0 and "--dcgm-compat" in out.stdout
    bad = run("--refresh-interval", "-1")
    assert bad.returncode == 2 and "refresh_interval: must be 0..3600" in bad.stderr
    cfg = short_root / "c.yaml"
    cfg.write_text("dcgm_compat: true\nbogus: 1\n")
    bad = run("--config", str(cfg))
    assert bad.returncode == 2 and "bogus: unknown setting" in bad.stderr


def test_unknown_metric_names_are_refused(short_root: Path) -> None:
    """A typo in --disable-metric would disable nothing; it is an error naming the typo."""
    for args, env, named in (
        (["--disable-metric", "DCGM_FI_NOPE"], {}, "DCGM_FI_NOPE"),
        (
            ["--disable-metric", "openxpu_power_watts", "--disable-metric", "openxpu_temprature"],
            {},
            "openxpu_temprature (did you mean openxpu_temperature_celsius?)",
        ),
        ([], {"OPENXPU_EXPORTER_DISABLED_METRICS": "openxpu_power_watts,DCGM_FI_NOPE"}, "NOPE"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "openxpu_exporter.cli", "--xpud-socket",
             str(short_root / "none.sock"), "--listen", f"127.0.0.1:{free_port()}", *args],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 2, out
        assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
        assert "unknown metric" in out.stderr and named in out.stderr, out.stderr
        assert "openxpu_power_watts" not in out.stderr  # a real name is not refused


def test_reads_of_xpud_are_not_logged_at_info(manual_xpud: XpudProcess, short_root: Path) -> None:
    """One line per read of xpud (a second) at the default level would flood the pod's log;
    at debug they are there."""
    for level, shown in (("info", False), ("debug", True)):
        log = short_root / f"exporter-{level}.log"
        with running_exporter(
            "--xpud-socket", str(manual_xpud.socket), "--no-pod-attribution",
            "--refresh-interval", "0.1", "--log-level", level, log=log,
        ):  # fmt: skip
            time.sleep(1.0)
        reads = [line for line in log.read_text().splitlines() if "/v1/telemetry" in line]
        assert bool(reads) is shown, (level, reads[:3])
        assert len(reads) < 50  # sanity: ~10 a second at most
