"""Pinned versions of everything the lab builds or installs.

Kubernetes v1.33: its kubelet still runs on cgroup v1 hosts without opting out of anything
(1.35 refuses cgroup v1 unless `failCgroupV1: false`), it is supported with containerd 1.7,
and the machines' own kubectl (v1.32) is within the supported one-minor skew of it.
See docs/lab.md for the full reasoning.
"""

from typing import Final

KUBERNETES: Final = "v1.33.13"
# Staging modules (k8s.io/api, k8s.io/client-go, ...) are tagged v0.<minor>.<patch>.
KUBERNETES_STAGING: Final = "v0.33.13"
KUBERNETES_COMPONENTS: Final = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
)
# Built only when the machine has no kubectl of its own (within one minor of the server).
KUBECTL = "kubectl"
# Debian bookworm ships containerd 1.6.20, which has no CDI support (added in 1.7);
# the device plugin hands out devices as CDI names, so containerd is built from its module.
CONTAINERD: Final = "v1.7.35"
CONTAINERD_COMMANDS: Final = ("containerd", "containerd-shim-runc-v2", "ctr")
HELM: Final = "v3.22.0"
# Cluster DNS, run as a host process (no image to pull): service names resolve in pods.
COREDNS: Final = "v1.15.0"
# Simulated nodes for scale tests; v0.7 is built against k8s.io/* v0.33, like the lab.
KWOK: Final = "v0.7.0"
# `up --monitoring`: the operator and its config reloader, built from the module.
PROMETHEUS_OPERATOR: Final = "v0.85.0"
# The Prometheus it runs: 2.53 LTS, within the operator's tested range. Built from the module
# (tagged v0.<minor>.<patch>) because Debian's package leaves out Kubernetes service
# discovery, which every ServiceMonitor becomes.
PROMETHEUS: Final = "v2.53.3"
PROMETHEUS_MODULE_VERSION: Final = "v0.53.3"
PROMETHEUS_OPERATOR_COMMANDS: Final = ("operator", "prometheus-config-reloader")
DEBIAN_SUITE: Final = "bookworm"
