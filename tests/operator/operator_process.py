"""The operator as a real process (`openxpu-operator run`) against a real kube-apiserver,
authenticated as its own ServiceAccount under operator/deploy/rbac.yaml: a missing rule
fails these tests like it would fail in a cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from openxpu_lab import apiserver_only
from openxpu_lab.envtest import ApiServer

ROOT = Path(__file__).parents[2]
CRD_PATH = ROOT / "operator/deploy/crds/xpuclusterpolicies.openxpu.io.yaml"
RBAC_PATH = ROOT / "operator/deploy/rbac.yaml"
OPERATOR = Path(sys.executable).parent / "openxpu-operator"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
POLICIES = "/apis/openxpu.io/v1/xpuclusterpolicies"
NAMESPACE = "openxpu"
RESYNC_SECONDS = 2
CLEANUP_TIMEOUT = 15
LEASE_SECONDS = 6

T = TypeVar("T")

PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


def node_body(name: str, labels: dict[str, str] | None = None, xpus: int = 2) -> dict[str, Any]:
    xpu = {"openxpu.io/xpu": str(xpus)}
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "status": {"capacity": xpu, "allocatable": xpu},
    }


@dataclass
class Env:
    api: ApiServer
    http: httpx.Client
    kubeconfig: Path  # the operator's: its ServiceAccount token

    def get(self, path: str) -> Any:
        r = self.http.get(path)
        return r.json() if r.status_code == 200 else None

    def items(self, path: str, selector: str = "") -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else None
        r = self.http.get(path, params=params)
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    def policy(self, name: str) -> dict[str, Any] | None:
        data: dict[str, Any] | None = self.get(f"{POLICIES}/{name}")
        return data

    def create_policy(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "openxpu.io/v1", "kind": "XPUClusterPolicy"}
        body |= {"metadata": {"name": name}, "spec": spec}
        r = self.http.post(POLICIES, json=body)
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        policy = self.policy(name) or {}
        for c in (policy.get("status") or {}).get("conditions") or []:
            if c["type"] == kind:
                return dict(c)
        return {}

    def create_node(self, name: str, labels: dict[str, str] | None = None, xpus: int = 2) -> None:
        """A Node (no kubelet behind it) whose status advertises `xpus` XPUs, as once the
        device plugin has registered."""
        r = self.http.post("/api/v1/nodes", json=node_body(name, labels, xpus))
        assert r.status_code == 201, r.text

    def node_labels(self, name: str) -> dict[str, str]:
        labels: dict[str, str] = self.get(f"/api/v1/nodes/{name}")["metadata"].get("labels") or {}
        return labels

    def delete_policy_and_wait(self, name: str, timeout: float = 90) -> None:
        self.http.delete(f"{POLICIES}/{name}")
        wait_until(f"policy {name} gone", lambda: self.policy(name) is None, timeout)


def _rbac(http: httpx.Client) -> None:
    for doc in yaml.safe_load_all(RBAC_PATH.read_text()):
        path = PATHS[doc["kind"]].format(ns=doc["metadata"].get("namespace", ""))
        r = http.post(path, json=doc)
        assert r.status_code in (201, 409), r.text


def _token_kubeconfig(api: ApiServer, http: httpx.Client, target: Path) -> Path:
    r = http.post(
        f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/openxpu-operator/token",
        json={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400},
        },
    )
    assert r.status_code == 201, r.text
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "envtest",
                "cluster": {"server": api.url, "certificate-authority": str(api.ca_cert)},
            }
        ],
        "users": [{"name": "operator", "user": {"token": r.json()["status"]["token"]}}],
        "contexts": [{"name": "operator", "context": {"cluster": "envtest", "user": "operator"}}],
        "current-context": "operator",
    }
    target.write_text(yaml.safe_dump(config))
    return target


@contextmanager
def environment() -> Iterator[Env]:
    """A fresh API server with the CRD, the operator's namespace and RBAC; the namespace's
    default ServiceAccount made by hand (no controller manager runs here)."""
    with apiserver_only() as api:
        tls = ssl.create_default_context(cafile=str(api.ca_cert))
        tls.load_cert_chain(str(api.client_cert), str(api.client_key))
        with httpx.Client(base_url=api.url, verify=tls, timeout=30) as http:
            assert http.post(CRDS, json=yaml.safe_load(CRD_PATH.read_text())).status_code == 201
            wait_until("the CRD served", lambda: http.get(POLICIES).status_code == 200)
            http.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}})
            sa = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts"
            http.post(sa, json={"metadata": {"name": "default"}})
            _rbac(http)
            kubeconfig = _token_kubeconfig(api, http, api.state_dir / "operator.kubeconfig")
            yield Env(api, http, kubeconfig)


class Operator:
    """One `openxpu-operator run` process."""

    def __init__(
        self,
        kubeconfig: Path,
        identity: str,
        log: Path,
        cleanup_timeout: float = CLEANUP_TIMEOUT,
        resync_seconds: float = RESYNC_SECONDS,
    ) -> None:
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.log = log
        self.sink = log.open("ab")
        self.process = subprocess.Popen(
            [
                str(OPERATOR),
                "run",
                "--resync-seconds",
                str(resync_seconds),
                "--cleanup-timeout",
                str(cleanup_timeout),
                "--lease-seconds",
                str(LEASE_SECONDS),
                "--identity",
                identity,
                "--metrics-address",
                "127.0.0.1",
                "--metrics-port",
                str(self.metrics_port),
                "--liveness-port",
                str(self.liveness_port),
            ],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=self.sink,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.sink.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
        self.kill()
        return self.process.returncode


@contextmanager
def operator(env: Env, tmp: Path, identity: str = "replica-a") -> Iterator[Operator]:
    with running(env.kubeconfig, tmp, identity) as op:
        yield op


@contextmanager
def running(
    kubeconfig: Path,
    tmp: Path,
    identity: str = "replica-a",
    cleanup_timeout: float = CLEANUP_TIMEOUT,
    resync_seconds: float = RESYNC_SECONDS,
) -> Iterator[Operator]:
    op = Operator(kubeconfig, identity, tmp / f"{identity}.log", cleanup_timeout, resync_seconds)
    try:
        yield op
    finally:
        op.stop()
        print(op.output()[-4000:])
