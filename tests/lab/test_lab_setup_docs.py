"""The README's setup says which Debian packages get installed on the host: every one the
lab (and its API-server tests) may install with apt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from openxpu_lab import hostdeps

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_names_every_package_the_lab_installs() -> None:
    setup = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    prose = re.sub(r"```.*?```", "", setup, flags=re.DOTALL)
    inline_code = " ".join(re.findall(r"`([^`]+)`", prose))
    named = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", inline_code))
    missing = set(hostdeps.PACKAGES) - named
    assert not missing, f"README's setup does not name {sorted(missing)}"
