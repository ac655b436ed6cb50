"""What users run: the workload API, the samples, xpu-smi and the driver installer."""

from __future__ import annotations

import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from openxpu_runtime import api
from openxpu_runtime.driver import Driver
from openxpu_runtime.errors import InvalidArgument, NotFound, OutOfMemory
from openxpu_runtime.samples.vectoradd import mismatches, vector_add
from openxpu_runtime.smi import main as smi_main
from openxpu_runtime.testing import XpudProcess
from openxpu_runtime.xpu import XpuSession, parse_size

pytestmark = pytest.mark.integration
MIB = 1 << 20


def run(
    tool: str,
    *args: str,
    socket: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    if socket:
        full_env["XPUD_SOCKET"] = str(socket)
    return subprocess.run(
        [sys.executable, "-m", tool, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def test_a_session_sees_only_its_visible_devices(xpud: XpudProcess) -> None:
    with xpud.client() as c:
        uuids = [d.uuid for d in c.inventory().devices]
    env = {"XPU_VISIBLE_DEVICES": f"{uuids[5]},2", "XPU_MEMORY_LIMIT_0": "64Mi"}
    with XpuSession(socket=xpud.socket, env=env) as xpu:
        assert xpu.device_count() == 2
        assert xpu.get_device_properties(0).uuid == uuids[5]
        assert xpu.get_device_properties(1).index == 2
        assert xpu.mem_get_info(0) == (64 * MIB, 64 * MIB)
        buf = xpu.malloc(48 * MIB, 0)
        assert xpu.mem_get_info(0)[0] == 16 * MIB
        with pytest.raises(OutOfMemory, match="limit"):
            xpu.malloc(32 * MIB, 0)
        xpu.free(buf)
        with pytest.raises(InvalidArgument, match="invalid device ordinal 2"):
            xpu.malloc(1, 2)
        xpu.launch(1e9, 1)
        xpu.synchronize()
        with xpud.client() as c:
            assert [p.pid for p in c.device(5).processes] == [os.getpid()]
    with xpud.client() as c:
        assert c.device(5).processes == []
    with pytest.raises(NotFound, match="XPU_VISIBLE_DEVICES names 'XPU-bogus'"):
        XpuSession(socket=xpud.socket, env={"XPU_VISIBLE_DEVICES": "XPU-bogus"})
    with XpuSession(socket=xpud.socket, env={"XPU_VISIBLE_DEVICES": f"{uuids[1]}::3"}) as xpu:
        assert [d.index for d in xpu.devices] == [1], "a shared replica is a slice of its device"


@pytest.mark.unit
def test_sizes_parse_like_kubernetes_quantities() -> None:
    assert parse_size("1048576") == MIB
    assert parse_size("512Mi") == 512 * MIB
    assert parse_size("2G") == 2 * 10**9
    with pytest.raises(InvalidArgument, match="not a memory size"):
        parse_size("lots")


@pytest.mark.unit
def test_vectoradd_check_catches_a_wrong_result() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(1000, dtype=np.float32)
    b = rng.random(1000, dtype=np.float32)
    c = vector_add(a, b, chunk=64)
    assert mismatches(a, b, c) == 0
    c[517] += 0.01
    assert mismatches(a, b, c) == 1


def test_vectoradd_passes_on_a_visible_device_and_fails_without_one(xpud: XpudProcess) -> None:
    ok = run(
        "openxpu_runtime.samples.vectoradd",
        "--elements",
        "100000",
        socket=xpud.socket,
        env={"XPU_VISIBLE_DEVICES": "1"},
    )
    assert ok.returncode == 0, ok.stderr
    assert "Test PASSED" in ok.stdout
    none = run(
        "openxpu_runtime.samples.vectoradd", socket=xpud.socket, env={"XPU_VISIBLE_DEVICES": "none"}
    )
    assert none.returncode == 2 and "no XPU visible" in none.stderr
    tiny = run(
        "openxpu_runtime.samples.vectoradd",
        "--elements",
        "1000000",
        socket=xpud.socket,
        env={"XPU_VISIBLE_DEVICES": "0", "XPU_MEMORY_LIMIT_0": "1Mi"},
    )
    assert tiny.returncode == 3 and "out of memory" in tiny.stderr


def test_burn_drives_utilization_to_the_target(xpud: XpudProcess) -> None:
    burn = start_burn(
        xpud, "--duration", "5", "--utilization", "0.5", "--memory", "1Gi", visible="6"
    )
    try:
        time.sleep(1.5)  # the first 1 s utilization window fills
        with xpud.client() as c:
            held = c.device(6).memory_used_bytes
        busy = mean_utilization(xpud, 2.0)
        out, err = burn.communicate(timeout=30)
    finally:
        burn.kill()
    assert burn.returncode == 0, out + err
    assert held == 1 << 30
    assert abs(busy[6] - 0.5) < 0.05, busy
    assert [u for i, u in enumerate(busy) if i != 6] == [0.0] * 7, "load beyond XPU_VISIBLE_DEVICES"


def test_smi_reports_what_xpud_reports(xpud: XpudProcess) -> None:
    table = run("openxpu_runtime.smi", socket=xpud.socket)
    assert table.returncode == 0, table.stderr
    assert "OpenXPU X1 64GB" in table.stdout and "No running processes found" in table.stdout
    assert table.stdout.count("Healthy") == 8
    data = json.loads(run("openxpu_runtime.smi", "--json", "-i", "2", socket=xpud.socket).stdout)
    assert [d["index"] for d in data["devices"]] == [2]
    inject = run(
        "openxpu_runtime.smi", "inject-fault", "-i", "2", "--code", "48", socket=xpud.socket
    )
    assert "health is now Unhealthy" in inject.stdout
    detail = run("openxpu_runtime.smi", "-q", "-i", "2", socket=xpud.socket).stdout
    assert "48 ECC_DBE (sticky)" in detail and "uncorrected 1" in detail
    cleared = run("openxpu_runtime.smi", "clear-fault", "-i", "2", socket=xpud.socket)
    assert "cleared [48]; health is now Healthy" in cleared.stdout
    bad = run("openxpu_runtime.smi", "inject-fault", "-i", "2", "--code", "5", socket=xpud.socket)
    assert bad.returncode == 2 and "unknown fault code 5" in bad.stderr
    missing = run("openxpu_runtime.smi", "-i", "12", socket=xpud.socket)
    assert missing.returncode == 2 and "no such device: 12" in missing.stderr
    xpud.stop()
    down = run("openxpu_runtime.smi", socket=xpud.socket)
    assert down.returncode == 9 and "couldn't communicate with xpud" in down.stderr


def test_driver_install_upgrade_uninstall_keeps_device_state(short_root: Path) -> None:
    def driver(*args: str) -> subprocess.CompletedProcess[str]:
        return run(
            "openxpu_runtime.driver", "--root", str(short_root), *args, env={"NODE_NAME": "node-d"}
        )

    first = driver(
        "install", "--version", "1.0.0", "--profile", "x1-8", "--xpud-arg=--device-nodes=file"
    )
    assert first.returncode == 0, first.stderr + first.stdout
    proc = XpudProcess(short_root)
    try:
        assert (short_root / "opt/openxpu/driver/current").resolve().name == "1.0.0"
        assert (short_root / "dev/xpu7").exists()
        assert (short_root / "usr/local/bin/xpu-smi").stat().st_mode & 0o111
        with proc.client() as c:
            assert c.version().driver_version == "1.0.0"
            uuid = c.inventory().devices[0].uuid
            ctx = c.open_context(api.ContextRequest(pid=1, name="kept", devices=["0"]))
            c.allocate(ctx.id, "0", 5 * MIB)
            c.inject_fault(api.FaultRequest(device="4", code=48))
        upgrade = driver(
            "install", "--version", "1.1.0", "--profile", "x1-8", "--xpud-arg=--device-nodes=file"
        )
        assert upgrade.returncode == 0, upgrade.stderr
        assert "upgrading 1.0.0 -> 1.1.0" in upgrade.stdout
        assert (short_root / "opt/openxpu/driver/current").resolve().name == "1.1.0"
        with proc.client() as c:
            assert c.version().driver_version == "1.1.0"
            assert c.inventory().devices[0].uuid == uuid
            assert c.device(0).memory_used_bytes == 5 * MIB
            assert c.device(4).health == "Unhealthy"
        status = json.loads(driver("status").stdout)
        assert status["installed"]["previous"] == "1.0.0" and status["xpud_pid"]
    finally:
        gone = driver("uninstall")
    assert gone.returncode == 0 and "device state kept" in gone.stdout
    assert not (short_root / "dev/xpu0").exists()
    assert not (short_root / "opt/openxpu/driver").exists()
    assert (short_root / "var/lib/openxpu/state.json").exists()
    assert driver("status").returncode == 1
    bad = driver("install", "--version", "2.0.0", "--profile", "nope")
    assert bad.returncode == 2 and "no built-in profile 'nope'" in bad.stderr


@pytest.mark.unit
def test_a_stale_pid_file_never_names_another_process(short_root: Path) -> None:
    driver = Driver(short_root)
    driver.pidfile.parent.mkdir(parents=True)
    # Left by xpud as pid 1 of a driver container; in the next one, 1 is someone else.
    for stale in ("1", str(os.getpid()), "999999999", "garbage"):
        driver.pidfile.write_text(stale)
        assert driver.running_pid() is None, stale


def spawn(
    tool: str, *args: str, socket: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", tool, *args],
        env={**os.environ, **(env or {}), "XPUD_SOCKET": str(socket)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr, stderr
    message = stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in message, stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["-l", "-1"], "-l/--loop: must be a finite number >= 0"),
        (["-l", "nan"], "-l/--loop: must be a finite number >= 0"),
        (["-l", "1", "--iterations", "-3"], "--iterations: must be a whole number >= 1"),
        (
            ["inject-fault", "-i", "0", "--code", "48", "--recover-after", "-5"],
            "--recover-after: must be a finite number > 0",
        ),
        (
            ["inject-fault", "-i", "0", "--code", "48", "--recover-after", "1e9"],
            "recover_after_seconds",
        ),
    ],
)
def test_smi_refuses_bad_numbers_in_one_line(
    argv: list[str], fragment: str, short_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before any call: the socket need not exist.
    code: int | str | None
    try:
        code = smi_main(["--socket", str(short_root / "none.sock"), *argv])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, fragment)


def test_smi_json_applies_to_processes(xpud: XpudProcess) -> None:
    with xpud.client() as c:
        ctx = c.open_context(api.ContextRequest(pid=4242, name="held", devices=["3"]))
        c.allocate(ctx.id, "3", 7 * MIB)
    for argv in (["--json", "processes"], ["processes", "--json"]):
        listed = run("openxpu_runtime.smi", *argv, socket=xpud.socket)
        assert listed.returncode == 0, listed.stderr
        [only] = json.loads(listed.stdout)
        assert only["pid"] == 4242 and only["devices"][0]["memory_used_bytes"] == 7 * MIB


def test_smi_says_no_devices_were_found_like_nvidia_smi(short_root: Path) -> None:
    empty = XpudProcess(short_root, "--profile", "x1-2", "--count", "0").start()
    try:
        for argv in ([], ["-q"]):
            table = run("openxpu_runtime.smi", *argv, socket=empty.socket)
            assert table.returncode == 6, table.stdout + table.stderr
            assert table.stdout.strip() == "No devices were found"
    finally:
        empty.stop()


def test_smi_in_a_closed_pipe_exits_quietly(xpud: XpudProcess) -> None:
    """`xpu-smi --json -l 1 | head -1`: the reader leaves, xpu-smi stops without a word."""
    smi = spawn("openxpu_runtime.smi", "--json", "-l", "0.05", socket=xpud.socket)
    assert smi.stdout is not None and smi.stderr is not None
    first = smi.stdout.readline()
    assert json.loads(first)["devices"]
    smi.stdout.close()
    code = smi.wait(timeout=30)
    err = smi.stderr.read()
    smi.stderr.close()
    assert code == 141, err  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    assert err == ""


def test_smi_events_survive_an_xpud_restart_and_say_why_they_stop(xpud: XpudProcess) -> None:
    events = spawn("openxpu_runtime.smi", "events", "--reconnect-timeout", "8", socket=xpud.socket)
    assert events.stdout is not None

    def snapshot() -> list[dict[str, Any]]:
        assert events.stdout is not None
        return [json.loads(events.stdout.readline()) for _ in range(8)]

    try:
        assert {e["type"] for e in snapshot()} == {"snapshot"}
        xpud.restart()  # a clean stop ends the stream; the tool must come back
        again = snapshot()
        assert {e["type"] for e in again} == {"snapshot"}
        assert sorted(e["device_index"] for e in again) == list(range(8))
        xpud.stop()
        code = events.wait(timeout=30)
    finally:
        events.kill()
        err = events.communicate()[1]
    assert code == 9, err
    assert_one_line_error(err, "event stream", "within 8s")


def test_a_plain_query_imports_no_http_or_validation_library(xpud: XpudProcess) -> None:
    """What keeps `xpu-smi` under 0.2 s: httpx, pydantic and rich cost ~0.4 s to import."""
    probe = (
        "import sys\n"
        "from openxpu_runtime.smi import main\n"
        "for argv in ([], ['-q'], ['--json'], ['processes'], ['--json', 'processes']):\n"
        "    assert main(argv) == 0, argv\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'httpx', 'pydantic', 'rich'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "XPUD_SOCKET": str(xpud.socket)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stderr, result.stderr


def start_burn(xpud: XpudProcess, *args: str, visible: str = "all") -> subprocess.Popen[str]:
    """xpu-burn on the `visible` devices of `xpud`, returned once its load is running."""
    burn = spawn(
        "openxpu_runtime.samples.burn",
        *args,
        socket=xpud.socket,
        env={"XPU_VISIBLE_DEVICES": visible},
    )
    assert burn.stdout is not None
    started = burn.stdout.readline()
    assert "device(s) at" in started, started + burn.communicate(timeout=30)[1]
    return burn


def mean_utilization(xpud: XpudProcess, seconds: float) -> list[float]:
    """Each device's utilization averaged over `seconds` of readings, 0.25 s apart."""
    sums = [0.0] * 8
    n = int(seconds / 0.25)
    with xpud.client() as c:
        for _ in range(n):
            for d in c.telemetry().devices:
                sums[d.index] += d.utilization_ratio
            time.sleep(0.25)
    return [s / n for s in sums]


def test_burn_keeps_going_on_healthy_devices_when_one_is_lost(xpud: XpudProcess) -> None:
    burn = start_burn(xpud, "--duration", "5", "--utilization", "0.9")
    try:
        time.sleep(1.0)
        with xpud.client() as c:
            c.inject_fault(api.FaultRequest(device="3", code=48))
        busy = mean_utilization(xpud, 2.0)
        assert burn.poll() is None, "xpu-burn stopped its load on every device"
        out, err = burn.communicate(timeout=30)
    finally:
        burn.kill()
    assert burn.returncode == 1, out + err
    assert "XPU 3" in err and "Unhealthy" in err, err
    assert "Traceback" not in err
    assert all(u > 0.6 for i, u in enumerate(busy) if i != 3), busy
    assert "lost XPU 3" in out.splitlines()[-1], out


def test_burn_hits_its_target_on_every_device(xpud: XpudProcess) -> None:
    """The pacing follows the clock, not the loop: eight devices take as long to serve as one."""
    burn = start_burn(xpud, "--duration", "7", "--utilization", "0.8")
    try:
        time.sleep(2.0)  # the first 1 s utilization window fills
        busy = mean_utilization(xpud, 4.0)
        out, err = burn.communicate(timeout=30)
    finally:
        burn.kill()
    assert burn.returncode == 0, out + err
    print("utilization at target 0.8:", [round(u, 3) for u in busy])
    assert all(abs(u - 0.8) < 0.05 for u in busy), busy


def test_vectoradd_stops_cleanly_on_ctrl_c(xpud: XpudProcess) -> None:
    # 10^15 ops keep a device busy for minutes: the interrupt lands in synchronize.
    add = spawn(
        "openxpu_runtime.samples.vectoradd",
        "--elements",
        "1000",
        "--iterations",
        "1000000000000",
        socket=xpud.socket,
    )
    assert add.stdout is not None
    assert "device 0" in add.stdout.readline()
    assert_ctrl_c_stops_cleanly(add, xpud)


def test_burn_stops_cleanly_on_ctrl_c(xpud: XpudProcess) -> None:
    assert_ctrl_c_stops_cleanly(start_burn(xpud, "--duration", "30", "--memory", "1Gi"), xpud)


def assert_ctrl_c_stops_cleanly(workload: subprocess.Popen[str], xpud: XpudProcess) -> None:
    """Like a shell: exit 130, a word on stderr, no traceback; and the context is closed."""
    workload.send_signal(signal.SIGINT)
    out, err = workload.communicate(timeout=30)
    assert workload.returncode == 130, out + err
    assert_one_line_error(err, "interrupted")
    with xpud.client() as c:
        assert c.processes() == [], "the interrupted workload left its context behind"


@pytest.mark.bench
def test_smi_query_time(xpud: XpudProcess) -> None:
    """Figures for a plain query, per call: wall and CPU time of the whole process, and how
    long xpud takes to answer. Prints; asserts nothing timed."""
    script = str(Path(sys.executable).parent / "xpu-smi")
    env = {**os.environ, "XPUD_SOCKET": str(xpud.socket)}
    for argv in ([script], [script, "--json"], [sys.executable, "-c", "pass"]):
        wall, cpu = [], []
        for _ in range(20):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
            wall.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        print(
            f"{' '.join(Path(a).name for a in argv)}: wall median {statistics.median(wall):.3f} s"
            f" (min {min(wall):.3f}), CPU median {statistics.median(cpu):.3f} s"
        )
    with xpud.client() as c:
        answers = []
        for _ in range(20):
            start = time.perf_counter()
            c.telemetry()
            answers.append(time.perf_counter() - start)
    print(f"xpud's telemetry answer: median {statistics.median(answers) * 1e3:.1f} ms")
