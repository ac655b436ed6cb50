"""xpu-driver in a scratch root: what a version is, and what it may touch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openxpu_runtime import api
from openxpu_runtime.client import XpudClient
from openxpu_runtime.daemon.main import is_faulty_release
from openxpu_runtime.driver import Driver
from openxpu_runtime.errors import OutOfMemory
from openxpu_runtime.testing import XpudProcess

pytestmark = pytest.mark.integration

XPUD = (sys.executable, "-m", "openxpu_runtime.daemon.main")


def xpu_driver(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openxpu_runtime.driver", "--root", str(root), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_NAME": "node-d"},
        timeout=60,
    )


def install(root: Path, version: str, *args: str) -> subprocess.CompletedProcess[str]:
    return xpu_driver(
        root,
        "install",
        "--version",
        version,
        "--profile",
        "x1-2",
        "--xpud-arg=--device-nodes=file",
        *args,
    )


@pytest.mark.parametrize(
    "version", ["/tmp/victim", "../../../etc", "/", "..", "current", "a/b", "1.0/../..", ""]
)
def test_a_version_is_a_plain_name_and_nothing_outside_the_driver_dir_is_touched(
    short_root: Path, version: str
) -> None:
    victim = short_root / "victim"
    (victim / "keep").mkdir(parents=True)
    (victim / "keep/important.txt").write_text("mine")
    # The paths the report tried, aimed at this scratch root's own files.
    aimed = str(victim) if version == "/tmp/victim" else version
    result = install(short_root, aimed)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is not a version name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert (victim / "keep/important.txt").read_text() == "mine"
    assert not (short_root / "opt/openxpu/driver").exists(), "refused before touching anything"


def test_an_upgrade_runs_the_new_versions_files(short_root: Path) -> None:
    driver = Driver(short_root)
    try:
        assert install(short_root, "1.0.0").returncode == 0
        assert install(short_root, "1.1.0").returncode == 0
        pid = driver.running_pid()
        assert pid is not None
        new_lib = short_root / "opt/openxpu/driver/1.1.0/lib"
        # The process imports from the version's directory, not the installer's environment.
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"PYTHONPATH={new_lib}".encode() in [e.split(b":")[0] for e in environ]
        starts = [line for line in driver.logfile.read_text().splitlines() if " from /" in line]
        assert f"from {new_lib}/openxpu_runtime:" in starts[-1]
        with XpudProcess(short_root).client() as c:
            assert c.version().driver_version == "1.1.0"
        # The xpu-smi shim runs the current version against this root's xpud.
        shim = short_root / "usr/local/bin/xpu-smi"
        env = {k: v for k, v in os.environ.items() if k not in ("XPUD_SOCKET", "PYTHONPATH")}
        smi = subprocess.run(
            [str(shim), "--json"], capture_output=True, text=True, env=env, cwd="/", timeout=30
        )
        assert smi.returncode == 0, smi.stderr
        assert json.loads(smi.stdout)["driver_version"] == "1.1.0"
    finally:
        xpu_driver(short_root, "uninstall")


def test_install_passes_recovery_flags_and_reports_xpuds_own_error(short_root: Path) -> None:
    try:
        assert install(short_root, "1.0.0").returncode == 0
        assert xpu_driver(short_root, "uninstall").returncode == 0  # a clean stop: a backup
        backup = short_root / "var/lib/openxpu/state.json.bak"
        backup.write_text("{ truncated")
        refused = install(short_root, "1.0.0", "--restore-backup")
        assert refused.returncode == 2
        assert f"xpud: backup {backup} is corrupt" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
        fresh = install(short_root, "1.0.0", "--reset-state")
        assert fresh.returncode == 0, fresh.stderr
        assert list((short_root / "var/lib/openxpu").glob("state.json.reset-*"))
        both = install(short_root, "1.0.0", "--reset-state", "--restore-backup")
        assert both.returncode == 2 and "not allowed with" in both.stderr
    finally:
        xpu_driver(short_root, "uninstall")


def test_a_broken_install_record_is_reported_not_a_traceback(short_root: Path) -> None:
    record = short_root / "var/lib/openxpu/driver.json"
    record.parent.mkdir(parents=True)
    record.write_text("{")
    status = xpu_driver(short_root, "status")
    assert status.returncode == 2
    assert f"xpu-driver: {record} is not an install record" in status.stderr
    assert "Traceback" not in status.stderr


def test_a_scope_and_its_context_survive_a_driver_upgrade(short_root: Path) -> None:
    """A container keeps its scope socket and its context while the driver is upgraded
    under it: the same path answers again, for the same allocation."""
    try:
        assert install(short_root, "1.0.0").returncode == 0
        with XpudProcess(short_root).client() as admin:
            replica = api.ScopeDeviceRequest(id="1::0", memory_limit_bytes=1 << 30)
            scope = admin.create_scope(api.ScopeRequest(devices=[replica]))
        assert scope.socket is not None
        with XpudClient(Path(scope.socket)) as workload:
            req = api.ContextRequest(pid=1, name="w", devices=["0"])
            ctx = workload.open_context(req)
            workload.allocate(ctx.id, "0", 1 << 29)
        assert install(short_root, "1.1.0").returncode == 0
        with XpudClient(Path(scope.socket)) as workload:
            assert workload.version().driver_version == "1.1.0"
            assert [p.id for p in workload.processes()] == [ctx.id]
            with pytest.raises(OutOfMemory):
                workload.allocate(ctx.id, "0", (1 << 29) + 1)
    finally:
        xpu_driver(short_root, "uninstall")


def _device_state(c: XpudClient) -> list[tuple[str, float, int, int, dict[str, int], list[int]]]:
    return [
        (
            d.health,
            d.energy_joules,
            d.ecc_corrected_total,
            d.ecc_uncorrected_total,
            d.errors_total,
            [f.code for f in d.active_faults],
        )
        for d in c.telemetry().devices
    ]


@pytest.mark.parametrize("faulty", ["0.3.0-faulty", "1.0.0-rc.1.faulty"])
def test_a_faulty_release_installs_refuses_to_start_and_leaves_the_device_state(
    short_root: Path, faulty: str
) -> None:
    """Rehearsing a bad driver upgrade: a version whose pre-release tag is `faulty` installs,
    its xpud fails the start-up self-test with one line and exit 3, the saved device state
    is left byte for byte, and the next good version resumes from it."""
    driver = Driver(short_root)
    manual = "--xpud-arg=--clock=manual"
    try:
        assert install(short_root, "0.2.0", manual).returncode == 0
        with XpudProcess(short_root).client() as c:
            c.inject_fault(api.FaultRequest(device="0", code=48))  # sticky, ECC uncorrected
            c.inject_fault(api.FaultRequest(device="1", code=63))  # ECC corrected
            c.advance_clock(300)  # energy integrates idle power
            before = _device_state(c)
        assert before[0][0] == "Unhealthy" and before[0][3] == 1 and before[1][2] == 1
        driver.stop_xpud()  # xpud saves its state on the way out: the state to keep
        saved = {p.name: p.read_bytes() for p in driver.paths.state_dir.glob("state.json*")}
        assert saved

        refused = install(short_root, faulty, manual)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert f"xpud: driver {faulty} failed its start-up self-test" in refused.stderr
        assert "emulated faulty release" in refused.stderr
        assert driver.running_pid() is None
        assert (short_root / f"opt/openxpu/driver/{faulty}/lib/openxpu_runtime").is_dir()
        # xpud run by hand (as the driver container runs it) says the same, exit 3.
        direct = subprocess.run(
            [
                *XPUD,
                "--root",
                str(short_root),
                "--profile",
                "x1-2",
                "--device-nodes=file",
                "--driver-version",
                faulty,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert direct.returncode == 3 and direct.stderr.startswith(f"xpud: driver {faulty} ")
        after = {p.name: p.read_bytes() for p in driver.paths.state_dir.glob("state.json*")}
        assert after == saved, "the faulty driver touched the device state"

        recovered = install(short_root, "0.2.1", manual)
        assert recovered.returncode == 0, recovered.stderr
        assert f"upgrading {faulty} -> 0.2.1" in recovered.stdout
        with XpudProcess(short_root).client() as c:
            assert c.version().driver_version == "0.2.1"
            assert _device_state(c) == before
    finally:
        xpu_driver(short_root, "uninstall")


FAULTY = ("0.3.0-faulty", "1.0.0-rc.1.faulty", "2.0.0-faulty-7", "0.3.0-faulty+build.5")
NOT_FAULTY = (
    "0.3.0",
    "0.3.0-rc.1",
    "0.3.0+faulty",
    "0.3.0+b-faulty",
    "",
    "faulty",
    "0.3.0-faultyx",
)


@pytest.mark.parametrize("version", FAULTY + NOT_FAULTY)
def test_only_a_faulty_pre_release_tag_fails_the_self_test(version: str) -> None:
    assert is_faulty_release(version) is (version in FAULTY)
