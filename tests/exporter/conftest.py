from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from openxpu_exporter.app import Exporter
from openxpu_exporter.config import Config
from openxpu_runtime.testing import XpudProcess

from .support import FakeKubelet


@pytest.fixture
def manual_xpud(short_root: Path) -> Iterator[XpudProcess]:
    """8 devices on the manual clock: readings change only when the test advances time."""
    proc = XpudProcess(short_root / "host", "--profile", "x1-8", "--clock", "manual").start()
    yield proc
    proc.stop()


@pytest.fixture
def kubelet(short_root: Path) -> Iterator[FakeKubelet]:
    server = FakeKubelet(short_root / "kubelet.sock").start()
    yield server
    server.stop()


@pytest.fixture
async def make_exporter() -> AsyncIterator[Any]:
    """In-process exporter(s) on an isolated registry, stopped at the end of the test."""
    started: list[Exporter] = []

    async def make(**settings: Any) -> Exporter:
        exporter = Exporter(Config(**settings))
        await exporter.start()
        started.append(exporter)
        return exporter

    yield make
    for exporter in started:
        await exporter.stop()
