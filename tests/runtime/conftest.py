from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from openxpu_runtime.testing import XpudProcess


@pytest.fixture
def manual_xpud(short_root: Path) -> Iterator[XpudProcess]:
    """xpud on the manual clock: time moves only when the test advances it."""
    proc = XpudProcess(short_root, "--profile", "x1-2", "--clock", "manual", "--seed", "7").start()
    yield proc
    proc.stop()
