"""A real kube-apiserver (the lab's apiserver-only mode) with the XPUClusterPolicy CRD."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from openxpu_lab import apiserver_only
from openxpu_lab.envtest import ApiServer

CRD_PATH = Path(__file__).parents[2] / "operator/deploy/crds/xpuclusterpolicies.openxpu.io.yaml"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
POLICIES = "/apis/openxpu.io/v1/xpuclusterpolicies"

needs_etcd = pytest.mark.skipif(
    os.geteuid() != 0 and not os.path.exists("/usr/bin/etcd"),
    reason="needs etcd (root installs it with apt)",
)


@dataclass
class Cluster:
    api: ApiServer
    http: httpx.Client

    def policy(self, name: str, spec: dict[str, Any], **params: str) -> httpx.Response:
        body = {
            "apiVersion": "openxpu.io/v1",
            "kind": "XPUClusterPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.http.post(POLICIES, json=body, params=params)


@pytest.fixture(scope="session")
def apiserver() -> Iterator[ApiServer]:
    with apiserver_only() as api:
        yield api


@pytest.fixture(scope="session")
def cluster(apiserver: ApiServer) -> Iterator[Cluster]:
    """The API server with the committed CRD installed and Established."""
    tls = ssl.create_default_context(cafile=str(apiserver.ca_cert))
    tls.load_cert_chain(str(apiserver.client_cert), str(apiserver.client_key))
    with httpx.Client(base_url=apiserver.url, verify=tls, timeout=30) as http:
        r = http.post(CRDS, json=yaml.safe_load(CRD_PATH.read_text()))
        assert r.status_code == 201, r.text
        wait_established(http, "xpuclusterpolicies.openxpu.io")
        yield Cluster(apiserver, http)


def wait_established(http: httpx.Client, name: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        crd: dict[str, Any] = http.get(f"{CRDS}/{name}").json()
        conditions = {c["type"]: c for c in (crd.get("status") or {}).get("conditions") or []}
        established = conditions.get("Established", {}).get("status") == "True"
        # The discovery of the new resource lags Established a little.
        if established and http.get(POLICIES).status_code == 200:
            return crd
        if time.monotonic() > deadline:
            raise AssertionError(f"CRD {name} not Established: {conditions}")
        time.sleep(0.2)
