"""The library's own Rust unit tests (device visibility, prefetch cadence, HTTP framing),
run by `make test` like every other tier."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

# The first run compiles the crate and its dependencies for tests.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_rust_unit_tests_pass() -> None:
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo/bin/cargo")
    done = subprocess.run(
        [cargo, "test", "--locked", "--quiet", "--manifest-path", "runtime/nvml/Cargo.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "test result: ok" in done.stdout
