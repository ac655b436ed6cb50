"""Fixtures every component's tests share."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openxpu_runtime.testing import XpudProcess


@pytest.fixture
def short_root() -> Iterator[Path]:
    """A scratch host root with a short path: unix socket paths are limited to 107 bytes,
    which pytest's own tmp paths can exceed."""
    root = Path(tempfile.mkdtemp(prefix="xpu-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def xpud(short_root: Path) -> Iterator[XpudProcess]:
    """A real xpud with the 2x4 link-group profile (x1-8)."""
    proc = XpudProcess(short_root, "--profile", "x1-8").start()
    yield proc
    proc.stop()
