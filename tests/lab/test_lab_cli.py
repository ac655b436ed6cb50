"""The CLI's surface: commands and defaults that scripts and the Makefile rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from openxpu_lab import cli
from openxpu_lab.cluster import COMPONENTS

pytestmark = pytest.mark.unit


def test_commands_exist() -> None:
    p = cli.build_parser()
    for argv in (
        ["up"],
        ["down"],
        ["status"],
        ["load-images"],
        ["kubeconfig"],
        ["build"],
        ["logs", "kubelet"],
        ["restart", "kubelet"],
        ["apiserver-only"],
    ):
        assert p.parse_args(argv).func is not None


def test_up_defaults_leave_kwok_nodes_alone() -> None:
    args = cli.build_parser().parse_args(["up"])
    assert args.kwok_nodes is None
    assert not args.no_openxpu_image


def test_logs_accepts_every_component() -> None:
    p = cli.build_parser()
    for c in COMPONENTS:
        assert p.parse_args(["logs", c]).component == c


def test_kubeconfig_without_a_lab_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--state-dir", str(tmp_path), "kubeconfig"]) == 1
    assert "run `openxpu-lab up` first" in capsys.readouterr().err


def test_status_of_a_lab_that_never_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--state-dir", str(tmp_path), "status"]) == 0
    out = capsys.readouterr().out
    assert "kube-apiserver" in out and "stopped" in out
