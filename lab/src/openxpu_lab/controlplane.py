"""Certificates, kubeconfigs and command lines of etcd and the Kubernetes control plane."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from openxpu_lab import health, paths, pki
from openxpu_lab.kubeconfig import write_kubeconfig
from openxpu_lab.paths import write_if_changed
from openxpu_lab.settings import KUBERNETES_SERVICE_IP, SERVICE_CIDR, LabSettings

# Identities of the lab's host processes that are not Kubernetes components, each bound by
# RBAC (rbac.py) to what it needs and nothing more.
COREDNS_USER = "openxpu-lab:coredns"
KWOK_USER = "openxpu-lab:kwok"


@dataclass(frozen=True)
class EtcdCredentials:
    """etcd trusts only its own CA: a client certificate of the cluster CA (which the
    controller-manager signs CSRs with) must not open the store."""

    ca: pki.CertPair
    server: pki.CertPair
    peer: pki.CertPair
    # The API server's client certificate; the lab's health probe uses it too.
    client: pki.CertPair


@dataclass(frozen=True)
class Credentials:
    ca: pki.CertPair
    etcd: EtcdCredentials
    apiserver: pki.CertPair
    kubelet_client: pki.CertPair
    sa: pki.CertPair
    front_proxy_ca: pki.CertPair
    front_proxy_client: pki.CertPair
    admin_kubeconfig: Path
    controller_manager_kubeconfig: Path
    scheduler_kubeconfig: Path
    kubelet_kubeconfig: Path
    proxy_kubeconfig: Path
    coredns_kubeconfig: Path
    kwok_kubeconfig: Path


def ensure_etcd_credentials(d: Path) -> EtcdCredentials:
    ca = pki.ensure_ca(d, "etcd-ca")

    def loopback_server(name: str) -> pki.CertPair:
        return pki.ensure_cert(
            d, ca, name, name, server=True, dns=("localhost",), ips=("127.0.0.1",)
        )

    return EtcdCredentials(
        ca=ca,
        server=loopback_server("etcd-server"),
        peer=loopback_server("etcd-peer"),
        client=pki.ensure_cert(d, ca, "apiserver-etcd-client", "kube-apiserver-etcd-client"),
    )


def ensure_credentials(s: LabSettings) -> Credentials:
    d = s.layout.pki
    ca = pki.ensure_ca(d)
    apiserver = pki.ensure_cert(
        d,
        ca,
        "apiserver",
        "kube-apiserver",
        server=True,
        dns=(
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ),
        ips=tuple(dict.fromkeys(("127.0.0.1", s.advertise_ip, KUBERNETES_SERVICE_IP))),
    )
    kubelet_client = pki.ensure_cert(
        d,
        ca,
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        orgs=("system:masters",),
    )
    sa = pki.ensure_service_account_key(d)
    # Aggregated API servers (metrics-server, ...) trust requests the API server proxies
    # with this separate CA; the controllers read it from extension-apiserver-authentication.
    front_proxy_ca = pki.ensure_ca(d, "front-proxy-ca")
    front_proxy_client = pki.ensure_cert(
        d, front_proxy_ca, "front-proxy-client", "front-proxy-client"
    )

    def kc(name: str, cn: str, orgs: tuple[str, ...] = ()) -> Path:
        pair = pki.ensure_cert(d, ca, name, cn, orgs=orgs)
        return write_kubeconfig(
            s.layout.config / f"{name}.kubeconfig", s.server_url, ca.cert, pair, cn
        )

    admin = kc("admin", "openxpu-lab-admin", ("system:masters",))
    write_if_changed(s.layout.admin_kubeconfig, admin.read_text(), mode=0o600)
    return Credentials(
        ca=ca,
        etcd=ensure_etcd_credentials(d),
        apiserver=apiserver,
        kubelet_client=kubelet_client,
        sa=sa,
        front_proxy_ca=front_proxy_ca,
        front_proxy_client=front_proxy_client,
        admin_kubeconfig=s.layout.admin_kubeconfig,
        controller_manager_kubeconfig=kc("controller-manager", "system:kube-controller-manager"),
        scheduler_kubeconfig=kc("scheduler", "system:kube-scheduler"),
        kubelet_kubeconfig=kc("kubelet", f"system:node:{s.node_name}", ("system:nodes",)),
        proxy_kubeconfig=kc("kube-proxy", "system:kube-proxy"),
        coredns_kubeconfig=kc("coredns", COREDNS_USER),
        kwok_kubeconfig=kc("kwok", KWOK_USER),
    )


def ensure_worker_credentials(lab: LabSettings, worker: LabSettings, c: Credentials) -> Credentials:
    """A worker's kubelet (its own node identity) and kube-proxy kubeconfigs, which dial the
    node address: the worker's loopback is its own network namespace's."""

    def kc(name: str, cert: str, cn: str, orgs: tuple[str, ...] = ()) -> Path:
        pair = pki.ensure_cert(lab.layout.pki, c.ca, cert, cn, orgs=orgs)
        path = worker.layout.config / f"{name}.kubeconfig"
        return write_kubeconfig(path, worker.server_url, c.ca.cert, pair, cn)

    worker.layout.ensure()
    node_user = f"system:node:{worker.node_name}"
    return replace(
        c,
        kubelet_kubeconfig=kc(
            "kubelet", f"kubelet-{worker.node_name}", node_user, ("system:nodes",)
        ),
        proxy_kubeconfig=kc("kube-proxy", "kube-proxy", "system:kube-proxy"),
    )


def etcd_argv(s: LabSettings, etcd: EtcdCredentials) -> list[str]:
    peer = s.etcd_peer_url
    return [
        "etcd",
        "--name=openxpu-lab",
        f"--data-dir={s.layout.etcd_data}",
        f"--listen-client-urls={s.etcd_url}",
        f"--advertise-client-urls={s.etcd_url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=openxpu-lab={peer}",
        "--initial-cluster-state=new",
        # Loopback is open to every local user: only holders of a certificate of the etcd
        # CA may read or write the cluster state, on the client and the peer port alike.
        "--client-cert-auth",
        f"--trusted-ca-file={etcd.ca.cert}",
        f"--cert-file={etcd.server.cert}",
        f"--key-file={etcd.server.key}",
        "--peer-client-cert-auth",
        f"--peer-trusted-ca-file={etcd.ca.cert}",
        f"--peer-cert-file={etcd.peer.cert}",
        f"--peer-key-file={etcd.peer.key}",
        # A throwaway single-member store on loopback: keep it small and quick.
        "--quota-backend-bytes=2147483648",
        "--snapshot-count=10000",
        "--log-level=warn",
    ]


def etcd_healthy(s: LabSettings, etcd: EtcdCredentials) -> bool:
    return health.http_ok(f"{s.etcd_url}/health", etcd.ca.cert, etcd.client.cert, etcd.client.key)


def apiserver_argv(s: LabSettings, c: Credentials) -> list[str]:
    bind = paths.k8s_bin_dir()
    return [
        str(bind / "kube-apiserver"),
        f"--etcd-servers={s.etcd_url}",
        f"--etcd-cafile={c.etcd.ca.cert}",
        f"--etcd-certfile={c.etcd.client.cert}",
        f"--etcd-keyfile={c.etcd.client.key}",
        f"--bind-address={s.bind_ip}",
        f"--advertise-address={s.advertise_ip}",
        f"--secure-port={s.apiserver_port}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--client-ca-file={c.ca.cert}",
        f"--tls-cert-file={c.apiserver.cert}",
        f"--tls-private-key-file={c.apiserver.key}",
        f"--kubelet-client-certificate={c.kubelet_client.cert}",
        f"--kubelet-client-key={c.kubelet_client.key}",
        f"--service-account-key-file={c.sa.cert}",
        f"--service-account-signing-key-file={c.sa.key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--requestheader-client-ca-file={c.front_proxy_ca.cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={c.front_proxy_client.cert}",
        f"--proxy-client-key-file={c.front_proxy_client.key}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        # The lab's node address is its own bridge; the kubelet serves on it.
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_argv(s: LabSettings, c: Credentials) -> list[str]:
    kc = c.controller_manager_kubeconfig
    return [
        str(paths.k8s_bin_dir() / "kube-controller-manager"),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        "--secure-port=10257",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={c.sa.key}",
        f"--root-ca-file={c.ca.cert}",
        f"--cluster-signing-cert-file={c.ca.cert}",
        f"--cluster-signing-key-file={c.ca.key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # Pod addresses come from the CNI host-local range, not from node.spec.podCIDR.
        "--allocate-node-cidrs=false",
        "--controllers=*,-cloud-node-lifecycle,-service,-route",
        # A failed node (`openxpu-lab node kill`) turns NotReady after 20 s, not 50 s:
        # kubelets report every 5 s (node.py).
        "--node-monitor-grace-period=20s",
        "--v=1",
    ]


def scheduler_argv(s: LabSettings, c: Credentials) -> list[str]:
    kc = c.scheduler_kubeconfig
    return [
        str(paths.k8s_bin_dir() / "kube-scheduler"),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        "--secure-port=10259",
        "--leader-elect=false",
        "--v=1",
    ]
