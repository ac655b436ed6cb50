"""`helm test`'s pod, container by container, run here against the real components it
meets in a cluster: `xpu-vectoradd` on a real xpud with the device the device plugin would
hand it, and the exporter check against a real openxpu-exporter. (The pod itself needs
nodes: the lab's e2e runs `helm test`.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
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
    program = sys.executable if command[0] == "python3" else shutil.which(command[0], path=venv_bin)
    assert program, f"{command[0]} is not installed in this venv"
    env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", [])}, **env}
    return subprocess.run(
        [program, *command[1:]], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def exporter_url(xpud: XpudProcess, short_root: Path) -> Iterator[str]:
    with running_exporter(
        "--xpud-socket", str(xpud.socket), "--no-pod-attribution", log=short_root / "exporter.log"
    ) as exporter:
        yield exporter.url


def test_workload_container_passes_on_the_xpu_it_is_given(xpud: XpudProcess) -> None:
    container = _containers()["xpu-vectoradd"]
    assert container["resources"]["limits"] == {"openxpu.io/xpu": 1}
    out = _run(container, {"XPUD_SOCKET": str(xpud.socket), "XPU_VISIBLE_DEVICES": "0"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Test PASSED" in out.stdout


def test_exporter_container_succeeds_when_the_exporter_answers(exporter_url: str) -> None:
    out = _run(_containers()["exporter"], {"EXPORTER_URL": f"{exporter_url}/metrics"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "answers with openxpu_* metrics" in out.stdout


def test_exporter_container_fails_on_an_answer_without_xpu_metrics(exporter_url: str) -> None:
    container = _containers()["exporter"]
    script = container["command"][2]
    retry_for = "deadline = time.monotonic() + 120"
    assert retry_for in script  # no retrying here: one answer decides
    # A URL that answers, but not with metrics: the check must not pass on any 200.
    out = _run(
        {**container, "command": ["python3", "-c", script.replace(retry_for, "deadline = 0")]},
        {"EXPORTER_URL": f"{exporter_url}/healthz"},
    )
    assert out.returncode != 0
    assert "no openxpu_* metric in the answer" in out.stderr
