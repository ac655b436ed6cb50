"""The entry points as processes: --help, refusal of a bad config, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from openxpu_runtime.testing import XpudProcess

from .kubelet_peer import KubeletPeer

pytestmark = pytest.mark.integration


def run(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from openxpu_device_plugin import cli; sys.exit(cli.{}(sys.argv[1:]))"
    entry, *rest = args
    return subprocess.run(
        [sys.executable, "-c", code.format(entry), *rest],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("entry", ["plugin_main", "discovery_main"])
def test_help(entry: str) -> None:
    r = run(entry, "--help")
    assert r.returncode == 0
    assert "--config-file" in r.stdout and "--device-list-strategy" in r.stdout


def test_bad_config_at_start_is_refused_naming_the_field(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("version: v1\nflags:\n  deviceIDStrategy: serial\n")
    r = run("plugin_main", "--config-file", str(f))
    assert r.returncode == 2
    assert "flags.deviceIDStrategy" in r.stderr


def test_discovery_needs_a_node_name() -> None:
    r = run("discovery_main")
    assert r.returncode == 2 and "--node-name" in r.stderr


async def test_serves_registers_and_exits_cleanly_on_sigterm(
    xpud: XpudProcess, kubelet: KubeletPeer, short_root: Path, plugin_dir: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "openxpu_device_plugin.cli",
        "--plugin-dir",
        str(plugin_dir),
        "--xpud-socket",
        str(xpud.socket),
        "--cdi-spec-dir",
        str(short_root / "cdi"),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await kubelet.wait_registered(within=20)
        await kubelet.wait_devices(lambda d: len(d) == 8)
        assert (plugin_dir / "openxpu.io-xpu.sock").exists()
        assert (short_root / "cdi/openxpu.io-xpu.yaml").exists()
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, err.decode()
        assert not (plugin_dir / "openxpu.io-xpu.sock").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
