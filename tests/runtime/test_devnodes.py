"""Device nodes: mode 0660 whatever the umask, and never a major the kernel gave a driver."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from openxpu_runtime.daemon import devnodes

pytestmark = pytest.mark.unit
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")

KERNEL_WITHOUT_XPU = f"""Character devices:
  1 mem
{devnodes.XPU_MAJOR - 1} other
254 ndctl

Block devices:
{devnodes.XPU_MAJOR} blkext
"""


@pytest.fixture
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def proc_devices(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices"
    path.write_text(text)
    return path


@needs_root
@pytest.mark.usefixtures("usual_umask")
def test_char_nodes_get_mode_0660_despite_the_umask(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "xpu1").touch(mode=0o666)  # left by an older version: replaced
    os.chmod(dev / "xpu1", 0o666)
    paths = devnodes.create(dev, 2, "char", proc_devices(tmp_path, KERNEL_WITHOUT_XPU))
    for index, path in enumerate(paths):
        st = path.stat()
        assert stat.S_ISCHR(st.st_mode)
        assert os.major(st.st_rdev) == devnodes.XPU_MAJOR and os.minor(st.st_rdev) == index
        assert stat.S_IMODE(st.st_mode) == 0o660


@pytest.mark.usefixtures("usual_umask")
def test_file_nodes_get_mode_0660_too(tmp_path: Path) -> None:
    (path,) = devnodes.create(tmp_path / "dev", 1, "file")
    assert stat.S_IMODE(path.stat().st_mode) == 0o660


def test_a_major_the_kernel_lists_is_refused(tmp_path: Path) -> None:
    taken = proc_devices(
        tmp_path, f"Character devices:\n  1 mem\n{devnodes.XPU_MAJOR} tpm\n\nBlock devices:\n"
    )
    with pytest.raises(devnodes.DevNodeError, match=f"major {devnodes.XPU_MAJOR} belongs to .*tpm"):
        devnodes.create(tmp_path / "dev", 2, "char", taken)
    assert not (tmp_path / "dev").exists()


def test_only_the_character_section_counts(tmp_path: Path) -> None:
    majors = devnodes.character_majors(proc_devices(tmp_path, KERNEL_WITHOUT_XPU))
    assert majors == {1: "mem", devnodes.XPU_MAJOR - 1: "other", 254: "ndctl"}
