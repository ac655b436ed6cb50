"""Certificates made by the lab chain to its CA and carry the names clients dial."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from openxpu_lab import pki

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
