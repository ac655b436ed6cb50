"""`helm test`'s pod, container by container, run here against the real components it
meets in a cluster: `xpu-vectoradd` on a real xpud with the device the device plugin would
hand it, and the exporter check against a real openxpu-exporter. (The pod itself needs
nodes: the lab's e2e runs `helm test`.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from exporter.support import running_exporter

from openxpu_runtime.testing import XpudProcess

from .support import one, render

pytestmark = pytest.mark.integration


def _containers() -> dict[str, dict[str, Any]]:
    pod = one(render(), "Pod", "openxpu-test-xpu")
    return {c["name"]: c for c in pod["spec"]["containers"]}


def _run(container: dict[str, Any], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = list(container["command"])
    # The image's python3 and entry points are this venv's.
    venv_bin = os.path.dirname(sys.executable)
    command[0] = (
        sys.executable if command[0] == "python3" else shutil.which(command[0], path=venv_bin)
    )
    assert command[0], f"{container['command'][0]} is not installed in this venv"
    env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", [])}, **env}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_workload_container_passes_on_the_xpu_it_is_given(xpud: XpudProcess) -> None:
    container = _containers()["xpu-vectoradd"]
    assert container["resources"]["limits"] == {"openxpu.io/xpu": 1}
    out = _run(container, {"XPUD_SOCKET": str(xpud.socket), "XPU_VISIBLE_DEVICES": "0"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Test PASSED" in out.stdout


def test_exporter_container_succeeds_when_the_exporter_answers(
    xpud: XpudProcess, short_root: Path
) -> None:
    container = _containers()["exporter"]
    with running_exporter(
        "--xpud-socket", str(xpud.socket), "--no-pod-attribution", log=short_root / "exporter.log"
    ) as exporter:
        out = _run(container, {"EXPORTER_URL": f"{exporter.url}/metrics"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "answers with openxpu_* metrics" in out.stdout


def test_exporter_container_fails_on_an_answer_without_xpu_metrics(
    xpud: XpudProcess, short_root: Path
) -> None:
    container = _containers()["exporter"]
    with running_exporter(
        "--xpud-socket", str(xpud.socket), "--no-pod-attribution", log=short_root / "exporter.log"
    ) as exporter:
        # A URL that answers, but not with metrics: the check must not pass on any 200.
        script = container["command"][2].replace(
            "deadline = time.monotonic() + 120", "deadline = 0"
        )
        out = _run(
            {**container, "command": ["python3", "-c", script]},
            {"EXPORTER_URL": f"{exporter.url}/healthz"},
        )
    assert out.returncode != 0
    assert "no openxpu_* metric in the answer" in out.stderr
