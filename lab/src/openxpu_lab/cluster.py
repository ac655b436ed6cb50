"""`up`, `down` and `status` of the full lab: control plane + one real node."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from openxpu_lab import (
    cleanup,
    controlplane,
    dns,
    gobuild,
    health,
    hostdeps,
    kwok,
    network,
    node,
    procs,
    versions,
)
from openxpu_lab.images import openxpu, store
from openxpu_lab.progress import Progress
from openxpu_lab.settings import LabSettings
from openxpu_lab.shell import LabError, run

# Start order; `down` stops in reverse (the node first, etcd last).
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "containerd",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "coredns",
    "kwok",
)
# kwok runs only when KWOK nodes were asked for.
OPTIONAL = frozenset({"kwok"})


class LabInfo(TypedDict):
    kubeconfig: str
    server: str
    node: str
    state_dir: str
    cold_build_seconds: float
    start_seconds: float
    images: dict[str, str]


@dataclass(frozen=True)
class UpResult:
    info: LabInfo
    built_seconds: float
    ready_seconds: float


def _insecure_ok(url: str) -> bool:
    """Health endpoints of components whose serving certs are self-signed."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=3) as r:
            return bool(r.status == 200)
    except OSError:
        return False


class Lab:
    def __init__(self, settings: LabSettings, progress: Progress | None = None) -> None:
        self.s = settings
        self.lay = settings.layout
        self.p = progress or Progress()

    # ---- helpers -------------------------------------------------------------------------

    def _admin(self) -> tuple[Path, Path, Path]:
        return self.lay.pki / "ca.crt", self.lay.pki / "admin.crt", self.lay.pki / "admin.key"

    def api_get(self, path: str) -> Any:
        return health.get_json(f"{self.s.server_url}{path}", *self._admin())

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> bool:
        if procs.alive(name, self.lay.pids) is not None:
            return False
        procs.start(name, argv, self.lay.pids, self.lay.logs, env)
        return True

    def _wait(self, name: str, what: str, probe: Any, timeout: float = 90) -> None:
        health.wait_for(
            what,
            probe,
            timeout=timeout,
            component=name,
            pid_dir=self.lay.pids,
            log_dir=self.lay.logs,
        )

    def node_ready(self, since: float = 0.0) -> bool:
        """Ready, and (with `since`) reported by a kubelet heartbeat at or after that time:
        after a restart the node object still shows the last run's stale Ready."""
        try:
            n = self.api_get(f"/api/v1/nodes/{self.s.node_name}")
        except OSError:
            return False
        for c in n.get("status", {}).get("conditions", []):
            if c["type"] == "Ready" and c["status"] == "True":
                beat = dt.datetime.fromisoformat(c["lastHeartbeatTime"].replace("Z", "+00:00"))
                # Heartbeats have one-second resolution.
                return beat.timestamp() >= since - 1.0
        return False

    def _default_sa(self) -> bool:
        try:
            self.api_get("/api/v1/namespaces/default/serviceaccounts/default")
        except OSError:
            return False
        return True

    # ---- up ------------------------------------------------------------------------------

    def up(self, openxpu_image: bool = True, kwok_nodes: int | None = None) -> UpResult:
        """Start whatever is not running and wait for node Ready. `kwok_nodes`: None leaves
        KWOK nodes as they are, N makes it exactly N (0 removes them)."""
        if os.geteuid() != 0:
            raise LabError("openxpu-lab up needs root (it runs containerd, the kubelet, CNI)")
        t_start = time.monotonic()
        p = self.p
        hostdeps.ensure_packages(hostdeps.NODE_PACKAGES, p)
        built = 0.0
        built += sum(
            gobuild.ensure(
                gobuild.kubernetes_tool(), p, only=versions.KUBERNETES_COMPONENTS
            ).values()
        )
        built += sum(gobuild.ensure(gobuild.containerd_tool(), p).values())
        built += sum(gobuild.ensure(gobuild.coredns_tool(), p).values())
        gobuild.kubectl_path(p)
        t_run = time.monotonic()
        self.lay.ensure()
        creds = controlplane.ensure_credentials(self.s)
        node.write_node_configs(self.s, creds)
        network.setup(self.lay.root)
        s, lay = self.s, self.lay

        with p.step("etcd"):
            self._start("etcd", controlplane.etcd_argv(s))
            self._wait("etcd", "/health", lambda: health.http_ok(f"{s.etcd_url}/health"))
        with p.step("kube-apiserver"):
            self._start("kube-apiserver", controlplane.apiserver_argv(s, creds))
            self._wait(
                "kube-apiserver",
                "/readyz",
                lambda: health.http_ok(f"{s.server_url}/readyz", *self._admin()),
            )
        with p.step("containerd (CRI + CDI)"):
            self._start("containerd", node.containerd_argv(s), node.containerd_env())
            self._wait(
                "containerd",
                "its socket",
                lambda: (
                    lay.containerd_socket.exists()
                    and run(node.ctr(s, "version"), check=False).returncode == 0
                ),
            )
        for archive in store.ensure_basic_archives(p):
            store.import_archive(s, archive, p)
        with p.step("kube-controller-manager, kube-scheduler"):
            self._start("kube-controller-manager", controlplane.controller_manager_argv(s, creds))
            self._start("kube-scheduler", controlplane.scheduler_argv(s, creds))
            self._wait(
                "kube-controller-manager",
                "/healthz",
                lambda: _insecure_ok("https://127.0.0.1:10257/healthz"),
            )
            self._wait(
                "kube-scheduler",
                "/healthz",
                lambda: _insecure_ok("https://127.0.0.1:10259/healthz"),
            )
        with p.step("cluster DNS (CoreDNS on the host, Service kube-dns)"):
            dns.ensure_service(s)
            self._start("coredns", dns.coredns_argv(s))
            self._wait(
                "coredns",
                "/ready",
                lambda: health.http_ok(f"http://127.0.0.1:{dns.READY_PORT}/ready"),
            )
        with p.step("kubelet, kube-proxy"):
            kubelet_started = time.time()
            if not self._start("kubelet", node.kubelet_argv(s, creds)):
                kubelet_started = 0.0  # already running: its current status counts
            self._start("kube-proxy", node.kube_proxy_argv(s))
            self._wait(
                "kubelet", "/healthz", lambda: health.http_ok("http://127.0.0.1:10248/healthz")
            )
        with p.step(f"waiting for node {s.node_name} to be Ready"):
            self._wait(
                "kubelet", "node Ready", lambda: self.node_ready(since=kubelet_started), timeout=180
            )
            self._wait("kube-controller-manager", "the default service account", self._default_sa)
            self._wait(
                "kube-proxy", "/healthz", lambda: health.http_ok("http://127.0.0.1:10256/healthz")
            )
        ready = time.monotonic() - t_run
        if kwok_nodes is not None:
            with p.step(f"{kwok_nodes} KWOK-simulated nodes"):
                kwok.ensure_kwok_nodes(s, kwok_nodes, p)
        if openxpu_image:
            self.load_openxpu_image()
        info: LabInfo = {
            "kubeconfig": str(lay.admin_kubeconfig),
            "server": s.server_url,
            "node": s.node_name,
            "state_dir": str(lay.root),
            "cold_build_seconds": round(gobuild.recorded_build_seconds(), 1),
            "start_seconds": round(ready, 1),
            "images": store.image_names(),
        }
        lay.info.write_text(json.dumps(info, indent=2) + "\n")
        p.say(
            f"lab is up in {time.monotonic() - t_start:.1f}s; "
            f"export KUBECONFIG={lay.admin_kubeconfig}"
        )
        return UpResult(info, built, ready)

    def load_images(self, force: bool = False) -> None:
        if procs.alive("containerd", self.lay.pids) is None:
            raise LabError("containerd is not running: run `openxpu-lab up` first")
        for archive in store.ensure_basic_archives(self.p):
            store.import_archive(self.s, archive, self.p)
        self.load_openxpu_image(force)

    def load_openxpu_image(self, force: bool = False) -> None:
        hostdeps.ensure_packages(("mmdebstrap",), self.p)
        archive = openxpu.ensure_image(self.p, force=force)
        store.import_archive(self.s, archive, self.p)

    def restart(self, component: str) -> UpResult:
        """Stop one component by pid and bring the lab back (e.g. kubelet restart tests:
        device plugins must re-register with the new kubelet)."""
        if component not in COMPONENTS:
            raise LabError(f"unknown component {component}; one of {', '.join(COMPONENTS)}")
        was_running = procs.stop(component, self.lay.pids)
        if component == "kwok" and was_running:
            kwok.ensure_kwok_controller(self.s, self.p)
        return self.up(openxpu_image=False)

    # ---- status --------------------------------------------------------------------------

    def is_up(self) -> bool:
        """Every required component runs and the node is Ready."""
        st = self.status()
        required = [pid for c, pid in st["components"].items() if c not in OPTIONAL]
        return bool(st["node_ready"]) and all(required)

    def status(self) -> dict[str, Any]:
        comps = {c: procs.alive(c, self.lay.pids) for c in COMPONENTS}
        st: dict[str, Any] = {
            "state_dir": str(self.lay.root),
            "components": comps,
            "node_ready": False,
        }
        if comps["kube-apiserver"] is not None:
            st["node_ready"] = self.node_ready()
        return st

    # ---- down ----------------------------------------------------------------------------

    def _sandbox_netns(self) -> list[str]:
        """Network namespaces of our pod sandboxes, read from containerd before it stops."""
        found: list[str] = []
        out = run(node.ctr(self.s, "containers", "ls", "-q"), check=False, timeout=30).stdout
        for cid in out.split():
            info = run(node.ctr(self.s, "containers", "info", cid), check=False, timeout=30)
            try:
                spec = json.loads(info.stdout).get("Spec", {})
            except ValueError:
                continue
            for ns in spec.get("linux", {}).get("namespaces", []):
                if ns.get("type") == "network" and ns.get("path"):
                    found.append(ns["path"])
        return sorted(set(found))

    def _kill_tasks(self) -> None:
        out = run(node.ctr(self.s, "tasks", "ls", "-q"), check=False, timeout=30).stdout
        for tid in out.split():
            run(node.ctr(self.s, "tasks", "kill", "-s", "SIGKILL", tid), check=False, timeout=30)
        for tid in out.split():
            run(node.ctr(self.s, "tasks", "delete", "-f", tid), check=False, timeout=30)

    def down(self, purge: bool = False) -> list[str]:
        report: list[str] = []
        lay = self.lay
        netns: list[str] = []
        if procs.alive("kube-apiserver", lay.pids) is not None:
            try:
                n = kwok.delete_kwok_nodes(self.s)
            except OSError:
                n = 0
            if n:
                report.append(f"deleted {n} KWOK nodes")
        # The node goes first so nothing restarts containers while we remove them.
        for name in ("kwok", "kubelet", "kube-proxy"):
            if procs.stop(name, lay.pids):
                report.append(f"stopped {name}")
        if procs.alive("containerd", lay.pids) is None and lay.containerd_state.exists():
            # Left by a crash: containers may still run under their shims. Start containerd
            # again (briefly) so it can name their network namespaces and stop them.
            self._start("containerd", node.containerd_argv(self.s), node.containerd_env())
            with contextlib.suppress(LabError):
                self._wait(
                    "containerd",
                    "its socket",
                    lambda: run(node.ctr(self.s, "version"), check=False).returncode == 0,
                    timeout=30,
                )
        if procs.alive("containerd", lay.pids) is not None:
            netns = self._sandbox_netns()
            self._kill_tasks()
        for name in (
            "coredns",
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
            "containerd",
        ):
            if procs.stop(name, lay.pids):
                report.append(f"stopped {name}")
        n = cleanup.kill_shims(lay.containerd_socket)
        if n:
            report.append(f"killed {n} containerd shims")
        n = cleanup.kill_kubepods()
        if n:
            report.append(f"killed {n} leftover container processes")
        n = cleanup.unmount_under(self.s.kubelet_root) + cleanup.unmount_under(lay.root)
        if n:
            report.append(f"unmounted {n} mounts")
        n = cleanup.remove_netns(netns)
        if n:
            report.append(f"removed {n} network namespaces")
        n = cleanup.remove_kubepods_cgroups()
        if n:
            report.append(f"removed {n} pod cgroups")
        report += [f"removed {x}" for x in network.teardown(lay.root)]
        # Runtime state only: certificates, etcd data and imported images stay for a warm start.
        for d in (lay.containerd_state, lay.cni_ipam_dir):
            shutil.rmtree(d, ignore_errors=True)
        if purge:
            cleanup.unmount_under(lay.root)
            shutil.rmtree(lay.root, ignore_errors=True)
            report.append(f"deleted {lay.root}")
            if (self.s.kubelet_root / node.KUBELET_ROOT_MARKER).exists():
                shutil.rmtree(self.s.kubelet_root, ignore_errors=True)
                report.append(f"deleted {self.s.kubelet_root}")
        return report

    # ---- what `down` must not leave behind ------------------------------------------------

    def leftovers(self) -> list[str]:
        """Everything of this lab still on the host: empty after a clean `down`."""
        found: list[str] = []
        for c in COMPONENTS:
            pid = procs.alive(c, self.lay.pids)
            if pid is not None:
                found.append(f"process {c} (pid {pid})")
        found += [f"containerd shim pid {p}" for p in cleanup.shim_pids(self.lay.containerd_socket)]
        found += [f"container process pid {p}" for p in cleanup.kubepods_pids()]
        found += [f"mount {m}" for m in cleanup.mounts_under(self.lay.root)]
        found += [f"mount {m}" for m in cleanup.mounts_under(self.s.kubelet_root)]
        found += [f"network device {d}" for d in network.lab_links()]
        found += [f"network namespace {n}" for n in cleanup.cni_netns()]
        found += [f"iptables {c}" for c in network.lab_iptables()]
        return found
