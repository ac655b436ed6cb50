"""Certificates made by the lab chain to its CA and carry the names clients dial; private
files are private from the moment they exist."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from cryptography import x509

from openxpu_lab import pki
from openxpu_lab.kubeconfig import write_kubeconfig
from openxpu_lab.paths import StateLayout

pytestmark = pytest.mark.unit


def test_server_cert_chains_and_has_sans(tmp_path: Path) -> None:
    ca = pki.ensure_ca(tmp_path)
    pair = pki.ensure_cert(
        tmp_path,
        ca,
        "srv",
        "kube-apiserver",
        server=True,
        dns=("kubernetes",),
        ips=("127.0.0.1", "10.96.0.1"),
    )
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kubernetes"]
    assert ipaddress.ip_address("10.96.0.1") in san.get_values_for_type(x509.IPAddress)
    assert oct(pair.key.stat().st_mode & 0o777) == "0o600"


def test_client_cert_groups_and_reuse(tmp_path: Path) -> None:
    ca = pki.ensure_ca(tmp_path)
    first = pki.ensure_cert(tmp_path, ca, "admin", "me", orgs=("system:masters",))
    before = first.cert.read_bytes()
    again = pki.ensure_cert(tmp_path, ca, "admin", "me", orgs=("system:masters",))
    assert again.cert.read_bytes() == before  # made once, reused
    cert = x509.load_pem_x509_certificate(before)
    orgs = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    assert [o.value for o in orgs] == ["system:masters"]


def test_private_files_are_private_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys and kubeconfigs are created 0600 whatever the umask, not written readable and
    tightened afterwards (a window in which another user could read them): with umask 0 and
    every chmod a no-op they still come out 0600."""
    monkeypatch.setattr(Path, "chmod", lambda self, mode, **kw: None)
    old = os.umask(0)
    try:
        ca = pki.ensure_ca(tmp_path)
        pair = pki.ensure_cert(tmp_path, ca, "admin", "me")
        sa = pki.ensure_service_account_key(tmp_path)
        kc = write_kubeconfig(tmp_path / "admin.kubeconfig", "https://x", ca.cert, pair, "me")
    finally:
        os.umask(old)
    for private in (ca.key, pair.key, sa.key, kc):
        assert oct(private.stat().st_mode & 0o777) == "0o600", private.name


def test_state_dirs_are_private_from_the_start(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        layout = StateLayout(tmp_path / "lab")
        layout.ensure()
    finally:
        os.umask(old)
    for d in (layout.root, layout.pki, layout.config):
        assert oct(d.stat().st_mode & 0o777) == "0o700", d.name
