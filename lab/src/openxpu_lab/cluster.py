"""`up`, `down` and `status` of the full lab: control plane + one real node."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import ssl
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, TypedDict

from openxpu_lab import (
    claims,
    cleanup,
    controlplane,
    dns,
    gobuild,
    health,
    hostdeps,
    kube,
    kwok,
    monitoring,
    network,
    node,
    nodes,
    procs,
    rbac,
    versions,
)
from openxpu_lab.images import openxpu, store
from openxpu_lab.progress import Progress
from openxpu_lab.settings import PROFILE_LABEL, LabSettings, NodeSpec, node_specs
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
    nodes: list[str]
    state_dir: str
    cold_build_seconds: float
    start_seconds: float
    # Resident memory of one worker node's kubelet + containerd + kube-proxy, in MiB.
    worker_rss_mib: list[float]
    images: dict[str, str]


class NodeList(TypedDict):
    count: int
    profiles: dict[str, str]  # node name -> emulation profile


@dataclass(frozen=True)
class UpResult:
    info: LabInfo
    built_seconds: float
    ready_seconds: float


# A Kubernetes label value (the profile names the node label openxpu.io/emulation.profile).
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


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
        self.settings = settings
        self.layout = settings.layout
        self.progress = progress or Progress()
        self._admin_client: Any = None

    # ---- helpers -------------------------------------------------------------------------

    def admin_api(self) -> Any:
        """A Kubernetes client as the lab's admin (made once the kubeconfig exists)."""
        if self._admin_client is None:
            self._admin_client = kube.api_client(self.layout.admin_kubeconfig)
        return self._admin_client

    def _start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        node_settings: LabSettings | None = None,
    ) -> bool:
        """Start a process of the lab (of a worker node with `node_settings`)."""
        lay = (node_settings or self.settings).layout
        if procs.alive(name, lay.pids) is not None:
            return False
        procs.start(name, argv, lay.pids, lay.logs, env)
        return True

    def _wait(
        self,
        name: str,
        what: str,
        probe: Any,
        timeout: float = 90,
        node_settings: LabSettings | None = None,
    ) -> None:
        lay = (node_settings or self.settings).layout
        health.wait_for(
            what, probe, timeout=timeout, component=name, pid_dir=lay.pids, log_dir=lay.logs
        )

    def _node_ready(self, name: str, since: float = 0.0) -> bool:
        if not self.layout.admin_kubeconfig.exists():
            return False
        return kube.node_ready(self.admin_api(), name, since)

    def node_ready(self, since: float = 0.0) -> bool:
        """Node 1 Ready, and (with `since`) reported by a kubelet heartbeat at or after then."""
        return self._node_ready(self.settings.node_name, since)

    def _default_sa(self) -> bool:
        read = kube.core(self.admin_api()).read_namespaced_service_account
        try:
            return kube.exists(read, "default", "default")
        except kube.API_ERRORS:
            return False

    def _refuse_foreign_kubelet_root(self) -> None:
        reason = node.foreign_kubelet_root(self.settings, procs.alive("kubelet", self.layout.pids))
        if reason:
            raise LabError(
                f"{reason}: the lab will not share it. Stop that kubelet (or bring that lab "
                f"down with --purge), or remove {self.settings.kubelet_root} if nothing uses it."
            )

    def _claim_host(self) -> None:
        """Record what is on the host before the lab adds its own: `down` removes the rest."""
        host = claims.load(self.layout.host_claims)
        if not host["active"]:
            host = {
                "active": True,
                "foreign_chains": network.chain_ids(),
                "kubelet_root": str(self.settings.kubelet_root),
                "cgroup_root": cleanup.CGROUP_ROOT,
            }
            claims.save(self.layout.host_claims, host)
        cleanup.ensure_cgroup_root()

    # ---- the lab's real nodes -------------------------------------------------------------

    def _recorded_nodes(self) -> NodeList:
        try:
            recorded: NodeList = json.loads(self.layout.node_list.read_text())
        except (OSError, ValueError):
            return {"count": 1, "profiles": {}}
        return recorded

    def node_specs(self) -> list[NodeSpec]:
        """The nodes this lab was last brought up with (node 1 alone before any `up`)."""
        rec = self._recorded_nodes()
        return node_specs(self.settings.node_name, rec["count"], rec["profiles"])

    def workers(self) -> list[LabSettings]:
        return [self.settings.for_worker(spec) for spec in self.node_specs()[1:]]

    def node_settings(self, name: str) -> LabSettings:
        """The settings of the node called `name` (or `worker-K`)."""
        for spec in self.node_specs():
            if name in (spec.name, spec.short):
                return self.settings if spec.is_host else self.settings.for_worker(spec)
        names = ", ".join(spec.name for spec in self.node_specs())
        raise LabError(f"no node {name} in this lab (nodes: {names})")

    def _wanted_nodes(self, count: int | None, profiles: dict[str, str] | None) -> list[NodeSpec]:
        """`count` None keeps the recorded nodes and profiles; given profiles win."""
        rec = self._recorded_nodes()
        for profile in (profiles or {}).values():
            if not _LABEL_VALUE.match(profile):
                raise LabError(f"--node-profile: {profile!r} is not a valid label value")
        lab_name = self.settings.node_name
        try:
            given = node_specs(lab_name, rec["count"] if count is None else count, profiles or {})
        except ValueError as exc:
            raise LabError(str(exc)) from exc
        names = {spec.name for spec in given}
        kept = {k: v for k, v in rec["profiles"].items() if k in names} if count is None else {}
        wanted = kept | {spec.name: spec.profile for spec in given if spec.profile}
        return node_specs(lab_name, len(given), wanted)

    def _save_nodes(self, specs: list[NodeSpec]) -> None:
        rec: NodeList = {
            "count": len(specs),
            "profiles": {s.name: s.profile for s in specs if s.profile},
        }
        self.layout.node_list.write_text(json.dumps(rec, indent=2) + "\n")

    def _start_worker_runtime(self, w: LabSettings, creds: controlplane.Credentials) -> None:
        """A worker's namespaces, configs and containerd, with the lab's images imported."""
        spec = w.node
        node.write_node_configs(w, creds)
        cleanup.ensure_cgroup_root(spec.cgroup_root)
        nodes.ensure_namespaces(self.settings, spec)
        self._start(
            "containerd",
            nodes.wrap(self.settings, spec, node.containerd_argv(w)),
            node.containerd_env(),
            w,
        )
        self._wait(
            "containerd",
            "its socket",
            lambda: run(node.ctr(w, "version"), check=False).returncode == 0,
            node_settings=w,
        )
        for archive in store.ensure_basic_archives(self.progress):
            store.import_archive(w, archive, self.progress)

    def _start_worker_node(self, w: LabSettings, creds: controlplane.Credentials) -> float:
        """Start a worker's kubelet and kube-proxy; the time to compare heartbeats with."""
        spec = w.node
        started = time.time()
        argv = nodes.wrap(self.settings, spec, node.kubelet_argv(w, creds))
        if not self._start("kubelet", argv, None, w):
            started = 0.0
        self._start("kube-proxy", nodes.wrap(self.settings, spec, node.kube_proxy_argv(w)), None, w)
        return started

    def _bring_up_workers(self, creds: controlplane.Credentials) -> list[float]:
        """Every worker to Ready; returns each one's RSS (MiB) once Ready."""
        workers = self.workers()
        if not workers:
            return []
        with self.progress.step(f"{len(workers)} worker nodes (own network and mount namespaces)"):
            since = {}
            for w in workers:
                wc = controlplane.ensure_worker_credentials(self.settings, w, creds)
                self._start_worker_runtime(w, wc)
                since[w.node_name] = self._start_worker_node(w, wc)
            for w in workers:
                self._wait(
                    "kubelet",
                    f"node {w.node_name} Ready",
                    lambda w=w: self._node_ready(w.node_name, since[w.node_name]),
                    timeout=180,
                    node_settings=w,
                )
        rss = []
        for w in workers:
            pids = [p for p in nodes.node_pids(w).values() if p is not None]
            rss.append(round(nodes.rss_kib(pids) / 1024, 1))
        return rss

    def _label_profiles(self, specs: list[NodeSpec]) -> None:
        """The operator's node pools select on the emulation profile label; the kubelet's
        --node-labels apply only when a node registers, so the lab sets them itself too."""
        api = kube.core(self.admin_api())
        for spec in specs:
            if spec.profile:
                body = {"metadata": {"labels": {PROFILE_LABEL: spec.profile}}}
                api.patch_node(spec.name, body, _request_timeout=kube.TIMEOUT)

    def _remove_worker(self, w: LabSettings) -> list[str]:
        """Stop a worker for good: its processes, pods, namespaces, cgroups, Node object."""
        report = []
        for name in ("kubelet", "kube-proxy"):
            if procs.stop(name, w.layout.pids):
                report.append(f"stopped {name} of {w.node_name}")
        if procs.alive("containerd", w.layout.pids) is not None:
            self._kill_tasks(w)
        if procs.stop("containerd", w.layout.pids):
            report.append(f"stopped containerd of {w.node_name}")
        n = nodes.kill_node(w)
        if n:
            report.append(f"killed {n} processes of {w.node_name}")
        n = cleanup.remove_cgroup(w.node.cgroup_root)
        if n:
            report.append(f"removed {n} cgroups of {w.node_name}")
        report += [f"removed {x}" for x in nodes.remove_namespaces(self.settings, w.node)]
        for d in (w.layout.containerd_state, w.layout.cni_ipam_dir, w.layout.root / "fs" / "run"):
            shutil.rmtree(d, ignore_errors=True)
        return report

    def _delete_node_objects(self, names: list[str]) -> None:
        if not names or procs.alive("kube-apiserver", self.layout.pids) is None:
            return
        api = kube.core(self.admin_api())
        for name in names:
            with contextlib.suppress(*kube.API_ERRORS):
                api.delete_node(name, _request_timeout=kube.TIMEOUT)

    # ---- node stop / start / kill -------------------------------------------------------

    def node_stop(self, name: str) -> list[str]:
        """Stop a node's kubelet, kube-proxy and containerd cleanly (SIGTERM); its pods'
        containers stay under their shims, as on a real node whose runtime stopped."""
        n = self.node_settings(name)
        return [
            f"stopped {c} of {n.node_name}"
            for c in ("kubelet", "kube-proxy", "containerd")
            if procs.stop(c, n.layout.pids)
        ]

    def node_kill(self, name: str) -> list[str]:
        """SIGKILL everything of a node: its kubelet, kube-proxy, containerd, shims, pods."""
        n = self.node_settings(name)
        return [f"killed {nodes.kill_node(n)} processes of {n.node_name}"]

    def node_start(self, name: str) -> None:
        """Start a stopped or killed node again and wait for it to be Ready."""
        n = self.node_settings(name)
        if n.node.is_host:
            self.up(openxpu_image=False)
            return
        if procs.alive("kube-apiserver", self.layout.pids) is None:
            raise LabError("the control plane is not running: run `openxpu-lab up` first")
        creds = controlplane.ensure_worker_credentials(
            self.settings, n, controlplane.ensure_credentials(self.settings)
        )
        self._start_worker_runtime(n, creds)
        since = self._start_worker_node(n, creds)
        with self.progress.step(f"waiting for node {n.node_name} to be Ready"):
            self._wait(
                "kubelet",
                f"node {n.node_name} Ready",
                lambda: self._node_ready(n.node_name, since),
                timeout=180,
                node_settings=n,
            )

    # ---- up ------------------------------------------------------------------------------

    def up(
        self,
        openxpu_image: bool = True,
        kwok_nodes: int | None = None,
        nodes_count: int | None = None,
        node_profiles: dict[str, str] | None = None,
        with_monitoring: bool | None = None,
    ) -> UpResult:
        """Start whatever is not running and wait for every node Ready. `kwok_nodes`: None
        leaves KWOK nodes as they are, N makes it exactly N (0 removes them). `nodes_count`:
        None keeps the real nodes as recorded (1 at first), N makes it exactly N.
        `with_monitoring`: True runs the Prometheus Operator and a Prometheus in the cluster
        (monitoring.py), False removes them, None leaves them as they are."""
        if os.geteuid() != 0:
            raise LabError("openxpu-lab up needs root (it runs containerd, the kubelet, CNI)")
        specs = self._wanted_nodes(nodes_count, node_profiles)
        self._refuse_foreign_kubelet_root()
        t_start = time.monotonic()
        p = self.progress
        self.settings = dataclasses.replace(self.settings, node_profile=specs[0].profile)
        settings, layout = self.settings, self.layout
        surplus = self.workers()[len(specs) - 1 :]
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
        layout.ensure()
        self._claim_host()
        self._save_nodes(specs)
        creds = controlplane.ensure_credentials(settings)
        node.write_node_configs(settings, creds)
        network.setup(layout.root)

        with p.step("etcd"):
            self._start("etcd", controlplane.etcd_argv(settings, creds.etcd))
            self._wait("etcd", "/health", lambda: controlplane.etcd_healthy(settings, creds.etcd))
        with p.step("kube-apiserver"):
            self._start("kube-apiserver", controlplane.apiserver_argv(settings, creds))
            self._wait("kube-apiserver", "/readyz", lambda: kube.ready(self.admin_api()))
            rbac.ensure_component_roles(self.admin_api())
        with p.step("containerd (CRI + CDI)"):
            self._start("containerd", node.containerd_argv(settings), node.containerd_env())
            self._wait(
                "containerd",
                "its socket",
                lambda: (
                    layout.containerd_socket.exists()
                    and run(node.ctr(settings, "version"), check=False).returncode == 0
                ),
            )
        for archive in store.ensure_basic_archives(p):
            store.import_archive(settings, archive, p)
        with p.step("kube-controller-manager, kube-scheduler"):
            self._start(
                "kube-controller-manager", controlplane.controller_manager_argv(settings, creds)
            )
            self._start("kube-scheduler", controlplane.scheduler_argv(settings, creds))
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
            dns.ensure_service(self.admin_api())
            self._start("coredns", dns.coredns_argv(settings, creds.coredns_kubeconfig))
            self._wait(
                "coredns",
                "/ready",
                lambda: health.http_ok(f"http://127.0.0.1:{dns.READY_PORT}/ready"),
            )
        with p.step("kubelet, kube-proxy"):
            kubelet_started = time.time()
            if not self._start("kubelet", node.kubelet_argv(settings, creds)):
                kubelet_started = 0.0  # already running: its current status counts
            self._start("kube-proxy", node.kube_proxy_argv(settings))
            self._wait(
                "kubelet", "/healthz", lambda: health.http_ok("http://127.0.0.1:10248/healthz")
            )
        with p.step(f"waiting for node {settings.node_name} to be Ready"):
            self._wait(
                "kubelet", "node Ready", lambda: self.node_ready(since=kubelet_started), timeout=180
            )
            self._wait("kube-controller-manager", "the default service account", self._default_sa)
            self._wait(
                "kube-proxy", "/healthz", lambda: health.http_ok("http://127.0.0.1:10256/healthz")
            )
        for w in surplus:
            for line in self._remove_worker(w):
                p.say(line)
        self._delete_node_objects([w.node_name for w in surplus])
        worker_rss = self._bring_up_workers(creds)
        self._label_profiles(specs)
        ready = time.monotonic() - t_run
        if kwok_nodes is not None:
            with p.step(f"{kwok_nodes} KWOK-simulated nodes"):
                kwok.ensure_kwok_nodes(settings, self.admin_api(), kwok_nodes, p)
        if openxpu_image:
            self.load_openxpu_image()
        if with_monitoring:
            self.start_monitoring()
        elif with_monitoring is False:
            monitoring.remove(layout.admin_kubeconfig, p)
        info: LabInfo = {
            "kubeconfig": str(layout.admin_kubeconfig),
            "server": settings.server_url,
            "node": settings.node_name,
            "nodes": [spec.name for spec in specs],
            "state_dir": str(layout.root),
            "cold_build_seconds": round(gobuild.recorded_build_seconds(), 1),
            "start_seconds": round(ready, 1),
            "worker_rss_mib": worker_rss,
            "images": store.image_names(),
        }
        layout.info.write_text(json.dumps(info, indent=2) + "\n")
        p.say(
            f"lab is up in {time.monotonic() - t_start:.1f}s; "
            f"export KUBECONFIG={layout.admin_kubeconfig}"
        )
        return UpResult(info, built, ready)

    def _running_nodes(self) -> list[LabSettings]:
        """Every node whose containerd runs: images go to each of them."""
        every = [self.settings, *self.workers()]
        return [n for n in every if procs.alive("containerd", n.layout.pids) is not None]

    def load_images(self, force: bool = False) -> None:
        if procs.alive("containerd", self.layout.pids) is None:
            raise LabError("containerd is not running: run `openxpu-lab up` first")
        for archive in store.ensure_basic_archives(self.progress):
            for n in self._running_nodes():
                store.import_archive(n, archive, self.progress)
        self.load_openxpu_image(force)

    def load_openxpu_image(self, force: bool = False) -> None:
        hostdeps.ensure_packages(("mmdebstrap",), self.progress)
        archive = openxpu.ensure_image(self.progress, force=force)
        for n in self._running_nodes():
            store.import_archive(n, archive, self.progress)

    def start_monitoring(self) -> None:
        """The Prometheus Operator and its Prometheus, images imported on every node."""
        hostdeps.ensure_packages(("mmdebstrap",), self.progress)
        for archive in monitoring.ensure_images(self.progress):
            for n in self._running_nodes():
                store.import_archive(n, archive, self.progress)
        monitoring.install(self.layout.admin_kubeconfig, self.progress)

    def restart(self, component: str) -> UpResult:
        """Stop one component by pid and bring the lab back (e.g. kubelet restart tests:
        device plugins must re-register with the new kubelet)."""
        if component not in COMPONENTS:
            raise LabError(f"unknown component {component}; one of {', '.join(COMPONENTS)}")
        was_running = procs.stop(component, self.layout.pids)
        if component == "kwok" and was_running:
            kwok.ensure_kwok_controller(self.settings, self.progress)
        return self.up(openxpu_image=False)

    # ---- status --------------------------------------------------------------------------

    def is_up(self) -> bool:
        """Every required component runs and every node is Ready."""
        status = self.status()
        required = [pid for c, pid in status["components"].items() if c not in OPTIONAL]
        workers = [w for name, w in status["nodes"].items() if name != self.settings.node_name]
        workers_up = all(w["ready"] and all(w["components"].values()) for w in workers)
        return bool(status["node_ready"]) and all(required) and workers_up

    def status(self) -> dict[str, Any]:
        """Components of the lab (node 1's among them), and every node: its own processes
        and whether it is Ready."""
        pids = {c: procs.alive(c, self.layout.pids) for c in COMPONENTS}
        api_up = pids["kube-apiserver"] is not None
        status: dict[str, Any] = {
            "state_dir": str(self.layout.root),
            "components": pids,
            "node_ready": api_up and self.node_ready(),
            "nodes": {},
        }
        for spec in self.node_specs():
            n = self.settings if spec.is_host else self.settings.for_worker(spec)
            status["nodes"][spec.name] = {
                "ip": spec.ip,
                "pod_cidr": spec.pod_cidr,
                "profile": spec.profile,
                "components": nodes.node_pids(n),
                "ready": api_up and self._node_ready(spec.name),
            }
        return status

    # ---- down ----------------------------------------------------------------------------

    def _kill_tasks(self, settings: LabSettings) -> None:
        ctr = node.ctr
        out = run(ctr(settings, "tasks", "ls", "-q"), check=False, timeout=30).stdout
        for tid in out.split():
            run(ctr(settings, "tasks", "kill", "-s", "SIGKILL", tid), check=False, timeout=30)
        for tid in out.split():
            run(ctr(settings, "tasks", "delete", "-f", tid), check=False, timeout=30)

    def down(self, purge: bool = False) -> list[str]:
        """Stop the lab's processes and remove what its `up` made on the host (claims.py),
        nothing else: another cluster's pods, chains and mounts stay."""
        report: list[str] = []
        settings, layout = self.settings, self.layout
        if procs.alive("kube-apiserver", layout.pids) is not None:
            try:
                n = kwok.delete_kwok_nodes(self.admin_api())
            except kube.API_ERRORS:
                n = 0
            if n:
                report.append(f"deleted {n} KWOK nodes")
        # Workers first: their pods reach node 1's, and their namespaces hold their mounts.
        for w in self.workers():
            report += self._remove_worker(w)
        nodes.release_ns_dir(settings)
        # The node goes first so nothing restarts containers while we remove them.
        for name in ("kwok", "kubelet", "kube-proxy"):
            if procs.stop(name, layout.pids):
                report.append(f"stopped {name}")
        if procs.alive("containerd", layout.pids) is None and layout.containerd_state.exists():
            # Left by a crash: containers may still run under their shims. Start containerd
            # again (briefly) so it can name their network namespaces and stop them.
            self._start("containerd", node.containerd_argv(settings), node.containerd_env())
            with contextlib.suppress(LabError):
                self._wait(
                    "containerd",
                    "its socket",
                    lambda: run(node.ctr(settings, "version"), check=False).returncode == 0,
                    timeout=30,
                )
        if procs.alive("containerd", layout.pids) is not None:
            self._kill_tasks(settings)
        for name in (
            "coredns",
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
            "containerd",
        ):
            if procs.stop(name, layout.pids):
                report.append(f"stopped {name}")
        n = cleanup.kill_shims(layout.containerd_socket)
        if n:
            report.append(f"killed {n} containerd shims")
        report += self._release_host()
        # Runtime state only: certificates, etcd data and imported images stay for a warm start.
        for d in (layout.containerd_state, layout.cni_ipam_dir):
            shutil.rmtree(d, ignore_errors=True)
        if purge:
            cleanup.unmount_under(layout.root)
            owned_kubelet_root = node.kubelet_root_owned_by_lab(settings)
            shutil.rmtree(layout.root, ignore_errors=True)
            report.append(f"deleted {layout.root}")
            if owned_kubelet_root:
                shutil.rmtree(settings.kubelet_root, ignore_errors=True)
                report.append(f"deleted {settings.kubelet_root}")
        return report

    def _release_host(self) -> list[str]:
        """Undo what `up` recorded in the host claims; nothing if this lab never came up."""
        report: list[str] = []
        settings, layout = self.settings, self.layout
        host = claims.load(layout.host_claims)
        cgroup_root = host["cgroup_root"] if host["active"] else None
        if cgroup_root:
            n = cleanup.kill_cgroup(cgroup_root)
            if n:
                report.append(f"killed {n} leftover container processes")
        n = cleanup.unmount_under(layout.root)
        if host["active"] and node.kubelet_root_owned_by_lab(settings):
            n += cleanup.unmount_under(settings.kubelet_root)
        if n:
            report.append(f"unmounted {n} mounts")
        if not host["active"]:
            return report
        if cgroup_root:
            n = cleanup.remove_cgroup(cgroup_root)
            if n:
                report.append(f"removed {n} pod cgroups")
        report += [
            f"removed {x}" for x in network.teardown(layout.root, frozenset(host["foreign_chains"]))
        ]
        host["active"] = False
        claims.save(layout.host_claims, host)
        return report

    # ---- what `down` must not leave behind ------------------------------------------------

    def leftovers(self) -> list[str]:
        """Everything of this lab still on the host: empty after a clean `down`."""
        layout = self.layout
        found: list[str] = []
        for c in COMPONENTS:
            pid = procs.alive(c, layout.pids)
            if pid is not None:
                found.append(f"process {c} (pid {pid})")
        for w in self.workers():
            found += [
                f"process {c} of {w.node_name} (pid {p})"
                for c, p in nodes.node_pids(w).items()
                if p
            ]
            found += nodes.leftovers(self.settings, w.node)
        found += [f"containerd shim pid {p}" for p in cleanup.shim_pids(layout.containerd_socket)]
        found += [f"worker containerd shim pid {p}" for p in cleanup.shim_pids(layout.nodes)]
        for root in [cleanup.CGROUP_ROOT, *cleanup.worker_cgroup_roots()]:
            found += [f"container process pid {p}" for p in cleanup.cgroup_pids(root)]
            found += [f"cgroup {d}" for d in cleanup.cgroup_dirs(root)]
        found += [f"network namespace {n}" for n in nodes.worker_netns()]
        found += [f"route {r}" for r in nodes.lab_routes()]
        found += [f"mount {m}" for m in cleanup.mounts_under(layout.root)]
        if node.kubelet_root_owned_by_lab(self.settings):
            found += [f"mount {m}" for m in cleanup.mounts_under(self.settings.kubelet_root)]
        found += [f"network device {d}" for d in network.lab_links()]
        foreign = frozenset(claims.load(layout.host_claims)["foreign_chains"])
        found += [f"iptables {c}" for c in network.lab_iptables(foreign)]
        return found
