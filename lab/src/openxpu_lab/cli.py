"""`openxpu-lab`: a real Kubernetes cluster on this machine, without Docker."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from openxpu_lab import envtest, gobuild, kube, monitoring, procs, versions
from openxpu_lab.cluster import COMPONENTS, Lab
from openxpu_lab.paths import default_state_dir
from openxpu_lab.progress import Progress
from openxpu_lab.settings import MAX_NODES, LabSettings, parse_node_profile
from openxpu_lab.shell import LabError


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative")
    return n


def _node_count(text: str) -> int:
    n = int(text)
    if not 1 <= n <= MAX_NODES:
        raise argparse.ArgumentTypeError(f"{n} is not between 1 and {MAX_NODES}")
    return n


def _node_profile(text: str) -> tuple[str, str]:
    try:
        return parse_node_profile(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _lab(args: argparse.Namespace) -> Lab:
    settings = LabSettings.for_state(Path(args.state_dir), args.node_name)
    return Lab(settings, Progress(quiet=args.quiet))


def cmd_up(args: argparse.Namespace) -> int:
    lab = _lab(args)
    res = lab.up(
        openxpu_image=not args.no_openxpu_image,
        kwok_nodes=args.kwok_nodes,
        nodes_count=args.nodes,
        node_profiles=dict(args.node_profile) if args.node_profile else None,
        with_monitoring=args.monitoring,
    )
    info = res.info
    print(f"kubeconfig: {info['kubeconfig']}")
    print(f"nodes:      {', '.join(info['nodes'])} (Ready)")
    if info["worker_rss_mib"]:
        each = ", ".join(f"{m:.0f}" for m in info["worker_rss_mib"])
        print(f"memory:     RSS of each extra node (kubelet + containerd + kube-proxy): {each} MiB")
    if res.built_seconds:
        print(
            f"figures:    cold build {res.built_seconds:.0f}s this run; "
            f"start to node Ready {res.ready_seconds:.1f}s"
        )
    else:
        print(
            f"figures:    warm start to node Ready {res.ready_seconds:.1f}s "
            f"(binaries cached; their cold build took {info['cold_build_seconds']:.0f}s)"
        )
    if args.monitoring:
        print(f"prometheus: {monitoring.url()} (`openxpu-lab monitoring summary`)")
    return 0


def cmd_monitoring(args: argparse.Namespace) -> int:
    if args.action == "url":
        print(monitoring.url())
        return 0
    values = monitoring.summary(args.url)
    if args.json:
        print(json.dumps([dataclasses.asdict(v) for v in values], indent=2))
        return 0
    label = ", ".join(f"{k}={v}" for k, v in monitoring.SELECTOR_LABELS.items())
    print(f"Prometheus answers at {args.url or monitoring.url()}")
    print(f"  (it selects ServiceMonitors and PrometheusRules labelled {label})")
    width = max(len(v.title) for v in values)
    for v in values:
        print(f"  {v.title:<{width}}  {v.value:>12}   {v.expr}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    for line in _lab(args).down(purge=args.purge):
        print(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    st = _lab(args).status()
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        for name, pid in st["components"].items():
            print(f"{name:24} {'running pid ' + str(pid) if pid else 'stopped'}")
        print(f"{'node Ready':24} {st['node_ready']}")
        for name, n in st["nodes"].items():
            procs_text = " ".join(
                f"{c}={pid if pid else 'stopped'}" for c, pid in n["components"].items()
            )
            profile = f" profile={n['profile']}" if n["profile"] else ""
            ready = "Ready" if n["ready"] else "NotReady"
            print(f"node {name}: {ready} ip={n['ip']} pods={n['pod_cidr']}{profile} {procs_text}")
    running = any(st["components"].values())
    all_ready = all(n["ready"] for n in st["nodes"].values())
    return 0 if (all_ready or not running) else 1


def cmd_node(args: argparse.Namespace) -> int:
    lab = _lab(args)
    if args.action == "start":
        lab.node_start(args.name)
        print(f"node {args.name} Ready")
        return 0
    lines = lab.node_stop(args.name) if args.action == "stop" else lab.node_kill(args.name)
    for line in lines:
        print(line)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    log_dir = Path(args.state_dir) / "logs"
    if args.node:
        log_dir = _lab(args).node_settings(args.node).layout.logs
    f = log_dir / f"{args.component}.log"
    if not f.exists():
        raise LabError(f"no log for {args.component} at {f}")
    print(procs.log_tail(args.component, log_dir, args.lines))
    if args.follow:
        with f.open() as fh:
            fh.seek(0, os.SEEK_END)
            try:
                while True:
                    line = fh.readline()
                    if line:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                    else:
                        time.sleep(0.3)
            except KeyboardInterrupt:
                return 0
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    _lab(args).restart(args.component)
    return 0


def cmd_load_images(args: argparse.Namespace) -> int:
    _lab(args).load_images(force=args.rebuild)
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    kc = Path(args.state_dir) / "admin.kubeconfig"
    if not kc.exists():
        raise LabError("no kubeconfig yet: run `openxpu-lab up` first")
    print(kc if args.path else kc.read_text(), end="\n" if args.path else "")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    p = Progress(quiet=args.quiet)
    k8s = gobuild.kubernetes_tool()
    spent = sum(gobuild.ensure(k8s, p, only=versions.KUBERNETES_COMPONENTS).values())
    tools = [k8s, gobuild.containerd_tool(), gobuild.coredns_tool()]
    if args.helm:
        tools.append(gobuild.helm_tool())
    if args.kwok:
        tools.append(gobuild.kwok_tool())
    spent += sum(sum(gobuild.ensure(t, p).values()) for t in tools[1:])
    gobuild.kubectl_path(p)
    print(
        f"binaries ready; built {spent:.0f}s this run, cold build recorded "
        f"{gobuild.recorded_build_seconds():.0f}s"
    )
    for t in tools:
        print(t.bin_dir)
    return 0


def cmd_apiserver_only(args: argparse.Namespace) -> int:
    """Run etcd + kube-apiserver in the foreground until ^C (for manual experiments)."""
    with envtest.apiserver_only() as api:
        print(f"API server {api.url}\nexport KUBECONFIG={api.kubeconfig}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="openxpu-lab", description=__doc__)
    ap.add_argument(
        "--state-dir",
        default=str(default_state_dir()),
        help="where the running lab keeps its files (default: %(default)s)",
    )
    ap.add_argument("--node-name", default=None, help="node name (default: the host name)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="bring the cluster up (idempotent); waits for node Ready")
    up.add_argument(
        "--no-openxpu-image", action="store_true", help="skip building/importing the OpenXPU image"
    )
    up.add_argument(
        "--kwok-nodes",
        type=_count,
        default=None,
        metavar="N",
        help="run exactly N KWOK-simulated nodes (tainted kwok.x-k8s.io/node=fake); "
        "0 removes them; default: leave them as they are",
    )
    up.add_argument(
        "--nodes",
        type=_node_count,
        default=None,
        metavar="N",
        help="exactly N real nodes: the host's own plus N-1 workers <node>-worker-K, each in "
        "its own network and mount namespaces; default: as the last `up` (1 at first)",
    )
    up.add_argument(
        "--node-profile",
        type=_node_profile,
        action="append",
        metavar="NODE=PROFILE",
        help="emulation profile of a node (e.g. worker-2=x1-4), set as its node label "
        "openxpu.io/emulation.profile; repeatable",
    )
    up.add_argument(
        "--monitoring",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the Prometheus Operator and a Prometheus in the cluster (docs/monitoring.md); "
        "--no-monitoring removes them; default: leave them as they are",
    )
    up.set_defaults(func=cmd_up)
    nd = sub.add_parser("node", help="fail or recover one node")
    nd.add_argument(
        "action",
        choices=("stop", "start", "kill"),
        help="stop: its kubelet, kube-proxy and containerd stop cleanly; kill: SIGKILL of "
        "every process of the node, its pods' included; start: back to Ready",
    )
    nd.add_argument("name", help="the node's name, or worker-K")
    nd.set_defaults(func=cmd_node)
    down = sub.add_parser("down", help="stop every lab process and remove what it set up")
    down.add_argument(
        "--purge",
        action="store_true",
        help="also delete the state dir (certs, etcd data, imported images)",
    )
    down.set_defaults(func=cmd_down)
    st = sub.add_parser("status", help="which components run; is the node Ready")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    lg = sub.add_parser("logs", help="a component's log")
    lg.add_argument("component", choices=COMPONENTS)
    lg.add_argument("-n", "--lines", type=int, default=100)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("--node", help="a worker node's containerd, kubelet or kube-proxy")
    lg.set_defaults(func=cmd_logs)
    rs = sub.add_parser("restart", help="restart one component (e.g. the kubelet)")
    rs.add_argument("component", choices=COMPONENTS)
    rs.set_defaults(func=cmd_restart)
    li = sub.add_parser("load-images", help="(re)build and import the lab's images")
    li.add_argument("--rebuild", action="store_true", help="rebuild the OpenXPU image")
    li.set_defaults(func=cmd_load_images)
    kc = sub.add_parser("kubeconfig", help="print the admin kubeconfig")
    kc.add_argument("--path", action="store_true", help="print its path instead")
    kc.set_defaults(func=cmd_kubeconfig)
    b = sub.add_parser("build", help="only build the Kubernetes/containerd binaries")
    b.add_argument("--helm", action="store_true", help="also build helm")
    b.add_argument("--kwok", action="store_true", help="also build kwok")
    b.set_defaults(func=cmd_build)
    mo = sub.add_parser("monitoring", help="the lab's in-cluster Prometheus (up --monitoring)")
    mo.add_argument(
        "action",
        choices=("summary", "url"),
        help="summary: where Prometheus answers and each headline dashboard panel's query "
        "with its current value; url: only where it answers",
    )
    mo.add_argument("--url", default=None, help="another Prometheus to ask (default: the lab's)")
    mo.add_argument("--json", action="store_true", help="summary as JSON")
    mo.set_defaults(func=cmd_monitoring)
    ao = sub.add_parser("apiserver-only", help="etcd + kube-apiserver in the foreground")
    ao.set_defaults(func=cmd_apiserver_only)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except LabError as exc:
        print(f"openxpu-lab: error: {exc}", file=sys.stderr)
        return 1
    except kube.API_ERRORS as exc:
        print(f"openxpu-lab: error: {kube.describe(exc)}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
