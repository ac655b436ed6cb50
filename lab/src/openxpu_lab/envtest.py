"""`apiserver_only()`: etcd + kube-apiserver on free loopback ports, like envtest.

For integration tests that need a real API server (CRDs, admission, RBAC) but no node.
Each call gets its own temporary state dir and ports, so tests may run beside a full lab.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from openxpu_lab import controlplane, gobuild, health, kube, procs
from openxpu_lab.hostdeps import ensure_packages
from openxpu_lab.paths import StateLayout
from openxpu_lab.progress import Progress
from openxpu_lab.settings import LabSettings


@dataclass(frozen=True)
class ApiServer:
    """What a test needs to talk to the API server."""

    url: str
    kubeconfig: Path
    ca_cert: Path
    client_cert: Path
    client_key: Path
    state_dir: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_apiserver_only(root: Path, progress: Progress | None = None) -> ApiServer:
    progress = progress or Progress(quiet=True)
    ensure_packages(("etcd-server",), progress)
    gobuild.ensure(gobuild.kubernetes_tool(), progress, only=("kube-apiserver",))
    s = LabSettings(
        StateLayout(root),
        node_name="envtest",
        bind_ip="127.0.0.1",
        advertise_ip="127.0.0.1",
        apiserver_port=_free_port(),
        etcd_client_port=_free_port(),
        etcd_peer_port=_free_port(),
        apiserver_only=True,
    )
    s.layout.ensure()
    c = controlplane.ensure_credentials(s)
    lay = s.layout
    procs.start("etcd", controlplane.etcd_argv(s, c.etcd), lay.pids, lay.logs)
    health.wait_for(
        "etcd health",
        lambda: controlplane.etcd_healthy(s, c.etcd),
        timeout=30,
        component="etcd",
        pid_dir=lay.pids,
        log_dir=lay.logs,
    )
    procs.start("kube-apiserver", controlplane.apiserver_argv(s, c), lay.pids, lay.logs)
    client = lay.pki / "admin.crt", lay.pki / "admin.key"
    admin = kube.api_client(c.admin_kubeconfig)
    health.wait_for(
        "API server /readyz",
        lambda: kube.ready(admin),
        timeout=90,
        component="kube-apiserver",
        pid_dir=lay.pids,
        log_dir=lay.logs,
    )
    return ApiServer(s.server_url, c.admin_kubeconfig, c.ca.cert, client[0], client[1], root)


def stop_apiserver_only(api: ApiServer) -> None:
    pids = api.state_dir / "pids"
    procs.stop("kube-apiserver", pids)
    procs.stop("etcd", pids)


@contextmanager
def apiserver_only(keep_state: bool = False) -> Iterator[ApiServer]:
    """Context manager: a fresh etcd + kube-apiserver, torn down (and deleted) on exit."""
    root = Path(tempfile.mkdtemp(prefix="openxpu-envtest-"))
    api: ApiServer | None = None
    try:
        api = start_apiserver_only(root)
        yield api
    finally:
        if api is not None:
            stop_apiserver_only(api)
        else:
            for name in ("kube-apiserver", "etcd"):
                procs.stop(name, root / "pids")
        if not keep_state:
            shutil.rmtree(root, ignore_errors=True)
