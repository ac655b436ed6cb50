"""The OpenXPU image installs what uv.lock pins (hash-checked), never a fresh resolution."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).parents[2]


def test_every_pip_install_in_the_dockerfile_is_pinned_and_unresolved() -> None:
    text = (REPO / "images/openxpu/Dockerfile").read_text().replace("\\\n", " ")
    installs = re.findall(r"pip install[^&\n]*", text)
    assert installs
    for cmd in installs:
        assert "--no-deps" in cmd, cmd  # nothing pip would choose by itself
        assert "--require-hashes -r /tmp/requirements.txt" in cmd or "/tmp/wheels/" in cmd, cmd


def test_the_lab_exports_the_lock_with_hashes(tmp_path: Path) -> None:
    openxpu = pytest.importorskip("openxpu_lab.images.openxpu")
    progress = pytest.importorskip("openxpu_lab.progress")
    out = tmp_path / "requirements.txt"
    openxpu.export_requirements(REPO, out, progress.Progress(quiet=True))
    reqs = [
        line.split(" ;")[0].removesuffix("\\").strip()
        for line in out.read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    ]
    assert "grpcio==1.85.1" in reqs and any(r.startswith("kubernetes==") for r in reqs)
    assert all("==" in r for r in reqs), reqs
    assert not any(r.startswith(("openxpu", "-e")) for r in reqs)  # the wheels are built
    assert out.read_text().count("--hash=sha256:") >= len(reqs)
    lock = (REPO / "uv.lock").read_text()
    for r in reqs:
        name, version = r.split("==")
        assert f'name = "{name}"\nversion = "{version}"' in lock, r
