"""The real xpud process over its unix socket."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import pytest

from openxpu_runtime import api
from openxpu_runtime.client import XpudClient
from openxpu_runtime.errors import (
    DeviceUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfMemory,
)
from openxpu_runtime.paths import HostPaths
from openxpu_runtime.testing import XpudProcess, run_xpud

pytestmark = pytest.mark.integration
GIB = 1 << 30

# Seed 7, manual clock, profile x1-2: 3.5 s of work on device 0, read every second.
# (utilization, power W, temperature C, energy J)
GOLDEN_TRACE = [
    (1.0, 150.03, 35.29, 150.0),
    (1.0, 149.96, 36.27, 300.0),
    (1.0, 149.93, 37.21, 449.9),
    (0.5, 87.62, 37.58, 537.5),
    (0.0, 24.97, 37.42, 562.5),
    (0.0, 24.94, 37.26, 587.4),
]


def open_ctx(client: XpudClient, *devices: str) -> str:
    return client.open_context(api.ContextRequest(pid=1, name="t", devices=list(devices))).id


def test_telemetry_chain_matches_the_golden_trace(manual_xpud: XpudProcess) -> None:
    with manual_xpud.client() as c:
        ctx = open_ctx(c, "0")
        peak = c.inventory().devices[0].peak_ops_per_second
        c.launch(ctx, "0", peak * 3.5)
        rows = []
        for _ in GOLDEN_TRACE:
            c.advance_clock(1.0)
            d = c.device(0)
            rows.append(
                (
                    round(d.utilization_ratio, 3),
                    round(d.power_watts, 2),
                    round(d.temperature_celsius, 2),
                    round(d.energy_joules, 1),
                )
            )
        idle_neighbour = c.device(1)
    assert rows == GOLDEN_TRACE
    assert idle_neighbour.utilization_ratio == 0.0


def test_inventory_is_stable_across_restarts(xpud: XpudProcess) -> None:
    with xpud.client() as c:
        first = c.inventory()
    xpud.restart()
    with xpud.client() as c:
        assert c.inventory().devices == first.devices
    assert [d.link_group for d in first.devices] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert first.devices[3].device_path.endswith("/dev/xpu3")
    assert (xpud.paths.device_dir / "xpu7").exists()


def test_allocations_faults_and_counters_survive_a_restart(xpud: XpudProcess) -> None:
    with xpud.client() as c:
        ctx = open_ctx(c, "0", "1")
        c.allocate(ctx, "0", 3 * GIB)
        c.inject_fault(api.FaultRequest(device="1", code=48))
        c.inject_fault(api.FaultRequest(device="0", code=63))
        before = c.device(0)
    xpud.restart()
    with xpud.client() as c:
        after0, after1 = c.device(0), c.device(1)
        assert after0.memory_used_bytes == 3 * GIB
        assert after0.ecc_corrected_total == 1 and after0.errors_total == {"63": 1}
        assert after0.energy_joules >= before.energy_joules
        assert after1.health == "Unhealthy"
        assert [(f.code, f.sticky) for f in after1.active_faults] == [(48, True)]
        assert after1.ecc_uncorrected_total == 1
        assert [p.id for p in c.processes()] == [ctx]


def test_event_stream_delivers_health_changes_as_they_happen(manual_xpud: XpudProcess) -> None:
    events: list[api.Event] = []
    got_snapshot, done = threading.Event(), threading.Event()

    def follow() -> None:
        with manual_xpud.client() as c:
            for event in c.events():
                events.append(event)
                if event.type == "snapshot" and event.device_index == 1:
                    got_snapshot.set()
                if event.type == "health" and event.health == "Healthy":
                    done.set()
                    return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert got_snapshot.wait(10)
    with manual_xpud.client() as c:
        c.inject_fault(api.FaultRequest(device="1", code=94, recover_after_seconds=5))
        c.advance_clock(5.1)
    assert done.wait(10)
    reader.join(5)
    kinds = [(e.type, e.device_index, e.health) for e in events]
    assert kinds == [
        ("snapshot", 0, "Healthy"),
        ("snapshot", 1, "Healthy"),
        ("fault", 1, "Unhealthy"),
        ("health", 1, "Unhealthy"),
        ("health", 1, "Healthy"),
    ]
    assert "CONTAINED_ECC" in events[3].reason
    assert events[2].seq < events[3].seq < events[4].seq


def test_concurrent_clients_never_overcommit_memory(xpud: XpudProcess) -> None:
    total = 64 * GIB
    chunk = total // 20
    granted: list[int] = []
    refused: list[str] = []

    def worker() -> None:
        with xpud.client() as c:
            ctx = open_ctx(c, "2")
            for _ in range(5):
                try:
                    granted.append(c.allocate(ctx, "2", chunk).size)
                except OutOfMemory as exc:
                    refused.append(str(exc))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 20 and len(refused) == 20
    with xpud.client() as c:
        assert c.device(2).memory_used_bytes == sum(granted) == 20 * chunk


def test_bad_requests_get_clear_4xx_and_xpud_stays_up(xpud: XpudProcess) -> None:
    with xpud.client() as c:
        ctx = open_ctx(c, "0")
        with pytest.raises(NotFound, match="no device '42'"):
            c.allocate(ctx, "42", 1)
        with pytest.raises(NotFound, match="no device 'XPU-nope'"):
            c.device("XPU-nope")
        with pytest.raises(NotFound, match="no device '²'"):
            c.device("²")
        with pytest.raises(InvalidArgument, match="size"):
            c.allocate(ctx, "0", -5)
        handle = c.allocate(ctx, "0", 1).handle
        c.free(ctx, handle)
        with pytest.raises(NotFound, match="already freed"):
            c.free(ctx, handle)
        with pytest.raises(InvalidArgument, match="unknown fault code 7"):
            c.inject_fault(api.FaultRequest(device="0", code=7))
        with pytest.raises(FailedPrecondition, match="not active"):
            c.clear_faults("0", 48)
        with pytest.raises(FailedPrecondition, match="--clock manual"):
            c.advance_clock(1)
        with pytest.raises(NotFound, match="no context"):
            c.launch("deadbeef", "0", 1)
        c.inject_fault(api.FaultRequest(device="3", code=79))
        ctx3 = open_ctx(c, "3")
        with pytest.raises(DeviceUnavailable, match="FALLEN_OFF_BUS"):
            c.launch(ctx3, "3", 1)
    raw = httpx.Client(transport=httpx.HTTPTransport(uds=str(xpud.socket)), base_url="http://x")
    with raw:
        answers = [
            raw.post("/v1/contexts", content=body, headers={"content-type": "application/json"})
            for body in (b"{not json", b"[]", b'{"pid": "x"}', b'{"pid":1,"name":"a","devices":[]}')
        ]
        answers.append(raw.delete("/v1/faults/0?code=abc"))
        for r in answers:
            assert r.status_code == 422
            # One error shape for every error, the framework's request checks included.
            assert list(r.json()) == ["error"] and r.json()["error"]["code"] == "invalid_argument"
        assert "body.pid: Input should be a valid integer" in answers[2].json()["error"]["message"]
        assert "query.code:" in answers[4].json()["error"]["message"]
        assert list(raw.get("/v1/nope").json()) == ["error"]
        documented = raw.get("/openapi.json").json()
        assert "HTTPValidationError" not in documented["components"]["schemas"]
        post_context = documented["paths"]["/v1/contexts"]["post"]["responses"]
        assert post_context["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse"
        )
    with xpud.client() as c:
        assert c.version().api == "v1"


def test_corrupt_state_file_stops_xpud_with_a_clear_error(short_root: Path) -> None:
    proc = XpudProcess(short_root, "--profile", "x1-2").start()
    proc.stop()
    state = proc.paths.state_file
    state.write_text('{"schema": 1, "devices": "oops"}')
    result = run_xpud("--root", str(short_root), "--device-nodes", "file", "--profile", "x1-2")
    assert result.returncode == 2
    assert "is corrupt" in result.stderr and "--restore-backup" in result.stderr
    assert state.read_text() == '{"schema": 1, "devices": "oops"}'
    assert list(state.parent.glob("state.json.corrupt-*"))
    # The operator's way out keeps the previous good state.
    restored = XpudProcess(short_root, "--profile", "x1-2", "--restore-backup").start()
    with restored.client() as c:
        assert len(c.inventory().devices) == 2
    restored.stop()


def test_a_second_xpud_on_the_same_socket_is_refused(xpud: XpudProcess) -> None:
    # Its own state directory, so the socket guard (not the state lock) is what refuses it.
    other_state = xpud.paths.root / "other-state"
    result = run_xpud(
        "--root", str(xpud.paths.root), "--state-dir", str(other_state), "--device-nodes", "file"
    )
    assert result.returncode == 2 and "another xpud is serving" in result.stderr


def test_a_corrupt_backup_is_refused_in_one_line(short_root: Path) -> None:
    XpudProcess(short_root, "--profile", "x1-2").start().stop()
    backup = HostPaths(short_root).state_dir / "state.json.bak"
    for garbage in (b"{ truncated", b"\xff\xfe", b'{"schema": 1}'):
        backup.write_bytes(garbage)
        result = run_xpud("--root", str(short_root), "--device-nodes", "file", "--restore-backup")
        assert result.returncode == 2, garbage
        assert result.stderr.startswith(f"xpud: backup {backup} is corrupt ("), result.stderr
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--tick", "0"],
        ["--tick", "nan"],
        ["--log-level", "loud"],
        ["--node", ""],
        ["--count", "-1"],
        ["--socket-mode", "999"],
        ["--reset-state", "--restore-backup"],
        ["--profile", "/etc/hostname"],
        ["--bogus"],
    ],
)
def test_a_bad_command_line_gets_one_line_and_exit_2(short_root: Path, argv: list[str]) -> None:
    result = run_xpud("--root", str(short_root), "--device-nodes", "file", *argv)
    assert result.returncode == 2
    assert result.stderr.startswith("xpud: ") and len(result.stderr.splitlines()) == 1, (
        result.stderr
    )
    assert not HostPaths(short_root).socket.exists()


def test_a_clean_stop_leaves_no_socket_or_pid_file(xpud: XpudProcess) -> None:
    pidfile = xpud.paths.run_dir / "xpud.pid"
    assert xpud.proc is not None and pidfile.read_text() == str(xpud.proc.pid)
    assert xpud.socket.stat().st_mode & 0o777 == 0o600, "the admin socket: root only"
    assert xpud.stop() == 0
    assert not xpud.socket.exists() and not pidfile.exists()


def test_a_start_that_fails_leaves_no_xpud_running(short_root: Path) -> None:
    proc = XpudProcess(short_root)
    with pytest.raises(RuntimeError, match="did not answer"):
        proc.start(timeout=0)  # gives up before xpud can have bound its socket
    still_running = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and str(short_root).encode() in _cmdline(pid)
    ]
    assert still_running == []


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""
