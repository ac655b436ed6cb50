"""The lab's own security, against a real etcd and kube-apiserver (apiserver-only mode):
etcd opens only to certificates of its own CA, and the host processes that are not
Kubernetes components (CoreDNS, KWOK) hold identities that can do their job and no more."""

from __future__ import annotations

import os
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from openxpu_lab import apiserver_only, kube, procs, rbac
from openxpu_lab.envtest import ApiServer
from openxpu_lab.gobuild import kubectl_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(1800),  # a fresh machine may build kube-apiserver first
    pytest.mark.skipif(
        os.geteuid() != 0 and not os.path.exists("/usr/bin/etcd"),
        reason="needs etcd (root installs it with apt)",
    ),
]


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with apiserver_only() as server:
        yield server


def _etcd_port(api: ApiServer) -> str:
    record = procs.read("etcd", api.state_dir / "pids")
    assert record is not None
    url = next(a for a in record["argv"] if a.startswith("--listen-client-urls="))
    return url.rsplit(":", 1)[1]


def _etcd_health(url: str, ca: Path | None = None, cert: str | None = None) -> int:
    ctx = None
    if ca is not None:
        ctx = ssl.create_default_context(cafile=str(ca))
        if cert:
            ctx.load_cert_chain(f"{cert}.crt", f"{cert}.key")
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return int(r.status)


def test_etcd_refuses_clients_without_its_certificate(api: ApiServer) -> None:
    port, pki = _etcd_port(api), api.state_dir / "pki"
    https = f"https://127.0.0.1:{port}/health"
    with pytest.raises(OSError):
        _etcd_health(f"http://127.0.0.1:{port}/health")  # no plain HTTP
    with pytest.raises(OSError):
        _etcd_health(https, pki / "etcd-ca.crt")  # TLS, no client certificate
    with pytest.raises(OSError):
        # The cluster CA signs every kubeconfig (and CSRs): not good enough for etcd.
        _etcd_health(https, pki / "etcd-ca.crt", str(pki / "admin"))
    assert _etcd_health(https, pki / "etcd-ca.crt", str(pki / "apiserver-etcd-client")) == 200


def _can(api: ApiServer, identity: str, *request: str) -> bool:
    kubeconfig = api.state_dir / "config" / f"{identity}.kubeconfig"
    assert kubeconfig.exists(), f"no kubeconfig of its own for {identity}"
    out = subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(kubeconfig), "auth", "can-i", *request],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


def test_coredns_identity_reads_services_and_nothing_more(api: ApiServer) -> None:
    rbac.ensure_component_roles(kube.api_client(api.kubeconfig))
    for allowed in (
        ("list", "services"),
        ("watch", "services"),
        ("list", "endpointslices.discovery.k8s.io"),
        ("watch", "namespaces"),
    ):
        assert _can(api, "coredns", *allowed, "-A"), allowed
    for denied in (
        ("create", "pods"),
        ("list", "secrets"),
        ("update", "services"),
        ("delete", "endpointslices.discovery.k8s.io"),
    ):
        assert not _can(api, "coredns", *denied, "-A"), denied


def test_kwok_identity_drives_nodes_and_pods_and_nothing_more(api: ApiServer) -> None:
    rbac.ensure_component_roles(kube.api_client(api.kubeconfig))
    for allowed in (
        ("patch", "nodes", "--subresource=status"),
        ("update", "pods", "--subresource=status"),
        ("delete", "pods", "-n", "default"),
        ("create", "leases.coordination.k8s.io", "-n", "kube-node-lease"),
        ("create", "events", "-n", "default"),
    ):
        assert _can(api, "kwok", *allowed), allowed
    for denied in (
        ("create", "pods", "-n", "default"),
        ("delete", "nodes"),
        ("create", "nodes"),
        ("get", "secrets", "-n", "kube-system"),
        ("create", "clusterrolebindings"),
    ):
        assert not _can(api, "kwok", *denied), denied
