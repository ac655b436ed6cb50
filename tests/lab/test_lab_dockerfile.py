"""The Dockerfile subset the lab interprets, and the repo's own Dockerfile staying inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from openxpu_lab.images import dockerfile
from openxpu_lab.images.openxpu import repo_root
from openxpu_lab.shell import LabError

pytestmark = pytest.mark.unit


def test_continuations_and_comments(tmp_path: Path) -> None:
    f = tmp_path / "Dockerfile"
    f.write_text(
        "# header\nFROM debian:bookworm-slim\n\nRUN apt-get update \\\n"
        '# inner comment\n && echo hi\nENV A=1 B="x y"\nCMD ["python3"]\n'
    )
    steps = dockerfile.parse(f)
    assert [s.op for s in steps] == ["FROM", "RUN", "ENV", "CMD"]
    assert steps[1].args == "apt-get update  && echo hi"
    assert steps[1].line == 4
    assert dockerfile.key_values(steps[2].args) == {"A": "1", "B": "x y"}
    assert dockerfile.exec_or_shell(steps[3].args) == ["python3"]


def test_shell_form_and_expansion() -> None:
    assert dockerfile.exec_or_shell("echo $A") == ["/bin/sh", "-c", "echo $A"]
    env = {"A": "/opt", "B": "x"}
    assert dockerfile.expand("${A}/bin:$B:${C:-dflt}", env) == "/opt/bin:x:dflt"
    assert dockerfile.key_values("PATH /usr/bin") == {"PATH": "/usr/bin"}


def test_unsupported_instruction_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "Dockerfile"
    f.write_text("FROM debian:bookworm-slim\nHEALTHCHECK CMD true\n")
    with pytest.raises(LabError, match="HEALTHCHECK is not supported"):
        dockerfile.parse(f)


def test_bad_exec_form(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="bad JSON"):
        dockerfile.exec_or_shell('["python3", 1]')


def test_repo_dockerfile_uses_only_the_subset() -> None:
    steps = dockerfile.parse(repo_root() / "images" / "openxpu" / "Dockerfile")
    assert steps[0].op == "FROM"
    assert steps[0].args == "debian:bookworm-slim"
