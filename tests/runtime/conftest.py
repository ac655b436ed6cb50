from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openxpu_runtime.testing import XpudProcess


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A scratch host root with a short path: unix socket paths are limited to 107 bytes."""
    root = Path(tempfile.mkdtemp(prefix="xpu-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def xpud(short_root: Path) -> Iterator[XpudProcess]:
    proc = XpudProcess(short_root, "--profile", "x1-8").start()
    yield proc
    proc.stop()


@pytest.fixture
def manual_xpud(short_root: Path) -> Iterator[XpudProcess]:
    """xpud on the manual clock: time moves only when the test advances it."""
    proc = XpudProcess(short_root, "--profile", "x1-2", "--clock", "manual", "--seed", "7").start()
    yield proc
    proc.stop()
