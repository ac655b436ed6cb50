"""Fixtures every component's tests share, and which tests must run one after another."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from openxpu_runtime.testing import XpudProcess

# `make test` runs two pytest-xdist workers. The lab is one per machine (port 6443,
# /var/lib/kubelet, iptables), so every test that uses it, or that touches what it owns on
# the host, goes to one worker in file order (`--dist loadgroup`); the other worker takes
# the rest, whose processes, sockets and API servers are their own.
LAB_GROUP = "lab"
LAB_FIXTURE = "lab_cluster"
# Not e2e, but on the host's own iptables, cgroups, /run/openxpu and buildah's storage.
HOST_MODULES = frozenset({"test_lab_buildah.py", "test_lab_host_claims.py", "test_lab_nodes.py"})


def uses_the_lab(item: pytest.Item) -> bool:
    return (
        item.get_closest_marker("e2e") is not None
        or LAB_FIXTURE in getattr(item, "fixturenames", ())
        or item.path.name in HOST_MODULES
    )


# Before xdist's own hook, which turns the group into the node id's `@lab` suffix.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if uses_the_lab(item):
            item.add_marker(pytest.mark.xdist_group(LAB_GROUP))


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
