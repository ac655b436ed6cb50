"""Fixtures for libnvidia-ml.so.1: the library as `make setup` builds it, loaded the way
NVIDIA's clients load it, against a real xpud."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from openxpu_runtime.testing import XpudProcess

ROOT = Path(__file__).resolve().parents[2]
LIB_DIR = ROOT / "runtime/nvml/lib"
LIB = LIB_DIR / "libnvidia-ml.so.1"
VISIBILITY_ENVS = ("XPU_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")


@pytest.fixture(scope="session")
def nvml_lib() -> ctypes.CDLL:
    """The library built from the current source (a no-op when `make setup` built it), and
    loaded under its soname: pynvml's CDLL("libnvidia-ml.so.1") then finds this one."""
    subprocess.run(["make", "-s", "nvml"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return ctypes.CDLL(str(LIB))


@pytest.fixture
def nvml_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean device selection: none of the visibility variables of the caller's shell."""
    for name in VISIBILITY_ENVS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def manual_xpud8(short_root: Path) -> Iterator[XpudProcess]:
    """x1-8 (two link groups, two NUMA nodes) on the manual clock: readings hold still, so
    NVML and xpu-smi can be compared exactly."""
    proc = XpudProcess(short_root, "--profile", "x1-8", "--clock", "manual", "--seed", "3").start()
    yield proc
    proc.stop()


@pytest.fixture
def nvml(
    nvml_lib: ctypes.CDLL, nvml_env: pytest.MonkeyPatch, manual_xpud8: XpudProcess
) -> Iterator[Any]:
    """pynvml initialised against `manual_xpud8`."""
    nvml_env.setenv("XPUD_SOCKET", str(manual_xpud8.socket))
    pynvml.nvmlInit()
    yield pynvml
    pynvml.nvmlShutdown()


def xpu_smi(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real xpu-smi CLI, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "openxpu_runtime.smi", "--socket", str(socket), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def xpu_smi_json(socket: Path) -> dict[str, Any]:
    done = xpu_smi(socket, "--json")
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def nvml_subprocess_env(socket: Path, **extra: str) -> dict[str, str]:
    """The environment of a separate NVML client: our library first on the search path."""
    env = {k: v for k, v in os.environ.items() if k not in VISIBILITY_ENVS}
    env["LD_LIBRARY_PATH"] = f"{LIB_DIR}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
    env["XPUD_SOCKET"] = str(socket)
    env.update(extra)
    return env
