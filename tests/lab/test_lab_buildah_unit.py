"""How the lab drives buildah: which local bases a Dockerfile needs, and the host's pip
settings handed to RUN steps as build secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from openxpu_lab.images import builder

pytestmark = pytest.mark.unit


def test_only_the_bases_a_dockerfile_names_are_made() -> None:
    assert builder._bases_named("FROM debian:bookworm-slim\n") == ["debian:bookworm-slim"]
    assert builder._bases_named("ARG B=debian:bookworm\nFROM $B\n") == ["debian:bookworm"]
    named = builder._bases_named("FROM docker.io/library/debian:bookworm-slim AS x")
    assert named == ["debian:bookworm-slim"]
    assert builder._bases_named("FROM quay.io/someone/debian:bookworm-slim") == []


def test_host_pip_settings_become_build_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "proxy-ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("PIP_CERT", str(ca))
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "180")
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")  # a host path: meaningless inside
    args = builder._pip_secrets(tmp_path)
    assert args[:2] == ["--secret", f"id=pip-ca.crt,src={ca}"]
    assert args[2:] == ["--secret", f"id=pip.conf,src={tmp_path / 'pip.conf'}"]
    conf = (tmp_path / "pip.conf").read_text()
    assert "cert = /run/pip-ca.crt" in conf and "default-timeout = 180" in conf
    assert "find-links" not in conf
