"""NVIDIA's go-nvml (from the Go module proxy, pinned in gonvml/go.sum) against
libnvidia-ml.so.1 and a real xpud: enumeration and the XID event wait through NVIDIA's
own bindings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from openxpu_runtime import api
from openxpu_runtime.testing import XpudProcess

from .conftest import nvml_subprocess_env, xpu_smi, xpu_smi_json

# The first run builds go-nvml with cgo (about a minute on two busy cores); later runs link.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SOURCE = Path(__file__).parent / "gonvml"
# Go's usual install path, for shells whose PATH lacks it.
GO_FALLBACK = Path("/usr/local/go/bin/go")


def find_go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    return str(GO_FALLBACK) if GO_FALLBACK.exists() else None


@pytest.fixture(scope="session")
def gonvml(tmp_path_factory: pytest.TempPathFactory, nvml_lib: object) -> Path:
    go = find_go()
    if go is None:
        pytest.skip("Go is not installed")
    binary = tmp_path_factory.mktemp("gonvml") / "gonvml"
    # Go's build cache makes every build after the first a link step; go-nvml's header
    # marks many calls deprecated, which is noise here.
    env = {**os.environ, "CGO_ENABLED": "1", "CGO_CFLAGS": "-O2 -Wno-deprecated-declarations"}
    done = subprocess.run(
        [go, "build", "-mod=readonly", "-o", str(binary), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return binary


def run(binary: Path, socket: Path, *args: str, **env: str) -> Any:
    done = subprocess.run(
        [str(binary), *args],
        env=nvml_subprocess_env(socket, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_go_nvml_enumerates_what_xpu_smi_shows(gonvml: Path, manual_xpud8: XpudProcess) -> None:
    with manual_xpud8.client() as client:
        ctx = client.open_context(api.ContextRequest(pid=777, name="go-load", devices=["6"]))
        client.allocate(ctx.id, "6", 2 << 30)
        client.launch(ctx.id, "6", ops=1e16)
        client.advance_clock(30)
        inventory = client.inventory().devices
    devices = run(gonvml, manual_xpud8.socket, "enumerate")
    smi = xpu_smi_json(manual_xpud8.socket)["devices"]
    assert [d["index"] for d in devices] == [d["minor"] for d in devices] == list(range(8))
    for got, want, inv in zip(devices, smi, inventory, strict=True):
        assert got["uuid"] == want["uuid"]
        assert got["name"] == inv.product
        assert (got["memory_total"], got["memory_used"], got["memory_free"]) == (
            want["memory_total_bytes"],
            want["memory_used_bytes"],
            want["memory_free_bytes"],
        )
        assert got["utilization_gpu"] == round(want["utilization_ratio"] * 100)
        assert abs(got["temperature"] - want["temperature_celsius"]) <= 0.5
        assert abs(got["power_mw"] - want["power_watts"] * 1000) <= 0.5
        assert got["power_limit_mw"] == want["power_limit_watts"] * 1000
        assert abs(got["energy_mj"] - want["energy_joules"] * 1000) <= 0.5
        assert abs(got["clock_sm"] - want["clock_mhz"]) <= 0.5
        assert got["max_clock_sm"] == want["max_clock_mhz"]
        assert got["clock_mem"] == want["memory_clock_mhz"]
        assert got["ecc_corrected"] == want["ecc_corrected_total"]
        assert got["numa_node"] == inv.numa_node
        assert got["process_pids"] == [p["pid"] for p in want["processes"]]
        assert got["mig_supported"] is False
        assert got["topology"] == [
            0 if o.index == inv.index else 10 if o.link_group == inv.link_group else 50
            for o in inventory
        ]
    assert devices[6]["utilization_gpu"] == 100
    assert devices[6]["process_pids"] == [777]


def test_go_nvml_sees_only_the_pods_devices(gonvml: Path, manual_xpud8: XpudProcess) -> None:
    uuids = [d["uuid"] for d in xpu_smi_json(manual_xpud8.socket)["devices"]]
    visible = f"{uuids[6]},{uuids[1]}"
    devices = run(gonvml, manual_xpud8.socket, "enumerate", XPU_VISIBLE_DEVICES=visible)
    assert [(d["index"], d["minor"], d["uuid"]) for d in devices] == [
        (0, 6, uuids[6]),
        (1, 1, uuids[1]),
    ]


def test_go_nvml_event_wait_sees_the_injected_xid(gonvml: Path, manual_xpud8: XpudProcess) -> None:
    waiter = subprocess.Popen(
        [str(gonvml), "wait-xid", "3", "20000"],
        env=nvml_subprocess_env(manual_xpud8.socket),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiter.stdout is not None
        assert waiter.stdout.readline().strip() == "registered"
        done = xpu_smi(manual_xpud8.socket, "inject-fault", "-i", "3", "--code", "74")
        assert done.returncode == 0, done.stderr
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0, err
    assert json.loads(out) == {"device": 3, "event_type": 8, "xid": 74}
