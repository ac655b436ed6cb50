"""`xpu-driver install` puts NVIDIA's names on a host: libnvidia-ml.so.1 in the version's
lib directory and `nvidia-smi` beside each xpu-smi shim — the files the device plugin mounts
into XPU containers — and `--no-nvidia-compat` takes them away again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openxpu_runtime.driver import SMI_SHIM

from .conftest import LIB, VISIBILITY_ENVS

pytestmark = pytest.mark.integration
VERSION = "1.0.0"
PYNVML_COUNT = (
    "import pynvml; pynvml.nvmlInit(); "
    "print([pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) "
    "for i in range(pynvml.nvmlDeviceGetCount())])"
)


def xpu_driver(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openxpu_runtime.driver", "--root", str(root), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_NAME": "node-c", **env},
        timeout=60,
    )


def install(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = xpu_driver(
        root,
        "install",
        "--version",
        VERSION,
        "--profile",
        "x1-2",
        "--xpud-arg=--device-nodes=file",
        *args,
        **env,
    )
    return done


def run(cmd: list[str] | str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in (*VISIBILITY_ENVS, "XPUD_SOCKET")}
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**base, **env}, timeout=60, check=False
    )


def test_install_puts_the_library_and_nvidia_smi_beside_xpu_smi(short_root: Path) -> None:
    version_dir = short_root / "opt/openxpu/driver" / VERSION
    host_bin = short_root / "usr/local/bin"
    done = install(short_root)
    assert done.returncode == 0, done.stderr
    try:
        assert (version_dir / "lib/libnvidia-ml.so.1").read_bytes() == LIB.read_bytes()
        for bindir in (host_bin, version_dir / "bin"):
            assert os.readlink(bindir / "nvidia-smi") == "xpu-smi"
            query = run([str(bindir / "nvidia-smi"), "--query-gpu=index,name", "--format=csv"])
            assert query.returncode == 0, query.stderr
            assert query.stdout.splitlines() == [
                "index, name",
                "0, OpenXPU X1 16GB",
                "1, OpenXPU X1 16GB",
            ]
            # Called as nvidia-smi it names itself so; as xpu-smi it stays xpu-smi.
            assert run([str(bindir / "nvidia-smi"), "--help"]).stdout.startswith(
                "usage: nvidia-smi"
            )
            assert run([str(bindir / "xpu-smi"), "--help"]).stdout.startswith("usage: xpu-smi")
        bad = run([str(host_bin / "nvidia-smi"), "--query-gpu=bogus", "--format=csv"])
        assert (bad.returncode, bad.stderr) == (
            2,
            'Field "bogus" is not a valid field to query.\n',
        )
        # NVIDIA's own client finds the installed library by its soname.
        socket = str(short_root / "run/openxpu/xpud.sock")
        names = run(
            [sys.executable, "-c", PYNVML_COUNT],
            LD_LIBRARY_PATH=str(version_dir / "lib"),
            XPUD_SOCKET=socket,
        )
        assert names.stdout.strip() == "['OpenXPU X1 16GB', 'OpenXPU X1 16GB']", names.stderr

        # Off: the same version again without it, and NVIDIA's names are gone.
        done = install(short_root, "--no-nvidia-compat")
        assert done.returncode == 0, done.stderr
        assert not (version_dir / "lib/libnvidia-ml.so.1").exists()
        for bindir in (host_bin, version_dir / "bin"):
            assert not (bindir / "nvidia-smi").is_symlink()
            assert (bindir / "xpu-smi").is_file()
        assert '"nvidia_compat": false' in xpu_driver(short_root, "status").stdout

        # A real nvidia-smi on the host is never replaced, nor removed by uninstall.
        (host_bin / "nvidia-smi").write_text("#!/bin/sh\necho NVIDIA\n")
        done = install(short_root)
        assert done.returncode == 0, done.stderr
        assert f"{host_bin / 'nvidia-smi'} exists and is not ours" in done.stderr
        assert (host_bin / "nvidia-smi").read_text() == "#!/bin/sh\necho NVIDIA\n"
        assert os.readlink(version_dir / "bin/nvidia-smi") == "xpu-smi"
    finally:
        assert xpu_driver(short_root, "uninstall").returncode == 0
    assert (host_bin / "nvidia-smi").read_text() == "#!/bin/sh\necho NVIDIA\n"
    assert not (host_bin / "xpu-smi").exists()


def test_uninstall_removes_our_nvidia_smi(short_root: Path) -> None:
    done = install(short_root)
    assert done.returncode == 0, done.stderr
    assert os.readlink(short_root / "usr/local/bin/nvidia-smi") == "xpu-smi"
    assert xpu_driver(short_root, "uninstall").returncode == 0
    assert not (short_root / "usr/local/bin/nvidia-smi").is_symlink()


def test_a_missing_library_stops_the_install_before_it_touches_anything(
    short_root: Path,
) -> None:
    done = install(short_root, XPU_NVML_LIBRARY=str(short_root / "nowhere.so"))
    assert done.returncode == 2
    assert done.stderr == (
        f"xpu-driver: {short_root / 'nowhere.so'} not found: build it (make setup), name it "
        "in $XPU_NVML_LIBRARY, or install with --no-nvidia-compat\n"
    )
    assert not (short_root / "opt").exists()


@pytest.mark.unit
def test_the_shim_falls_back_to_the_containers_python3(tmp_path: Path) -> None:
    """In a container the driver's interpreter is not there: the image's python3 runs it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    lib = Path(__import__("openxpu_runtime").__file__).parents[1]
    shim = tmp_path / "nvidia-smi"
    shim.write_text(
        SMI_SHIM.format(
            version="t", python="/nonexistent/python3", lib=lib, socket=tmp_path / "no.sock"
        )
    )
    shim.chmod(0o755)
    done = run([str(shim), "-L"], PATH=f"{bindir}:/usr/bin:/bin")
    # It ran (as nvidia-smi) and found no xpud: nvidia-smi's own line and exit code.
    assert done.returncode == 9
    assert done.stderr.startswith("NVIDIA-SMI has failed because it couldn't communicate")
