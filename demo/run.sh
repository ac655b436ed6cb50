#!/usr/bin/env bash
# `make demo`: a real one-node Kubernetes (the lab), OpenXPU installed with `helm install`, xpu
# pods running. Idempotent: run it again to upgrade the release in place and see a fresh
# validation run on the same cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
lab() { uv run --no-sync openxpu-lab "$@"; }

if [ "$(id -u)" != 0 ]; then
    echo "make demo runs a real kubelet and containerd: run it as root (sudo -E make demo)" >&2
    exit 1
fi

step "Cluster: openxpu-lab up --monitoring (first run builds Kubernetes, the Prometheus Operator and Prometheus from source; later runs reuse them)"
lab up --monitoring
export KUBECONFIG
KUBECONFIG="$(lab kubeconfig --path)"
# The machine's kubectl, or the one the lab built when the machine has none; helm is the
# lab's, built from its Go module at the pinned version (cached after the first run).
KUBECTL=$(uv run --no-sync python -c 'from openxpu_lab.gobuild import kubectl_path; print(kubectl_path())')
HELM=$(uv run --no-sync python -c '
from openxpu_lab import gobuild, paths
from openxpu_lab.progress import Progress
gobuild.ensure(gobuild.helm_tool(), Progress())
print(paths.helm_bin_dir() / "helm")')
kubectl() { "$KUBECTL" "$@"; }
helm() { "$HELM" "$@"; }

if kubectl -n openxpu get daemonset openxpu-driver >/dev/null 2>&1; then
    # An earlier `make demo` applied demo/stack/ by hand; its driver would run beside the
    # operator's (which are openxpu-driver-<profile>). The namespace file stays.
    step "Removing the hand-applied stack of an earlier make demo"
    kubectl delete -f demo/stack/10-driver.yaml -f demo/stack/20-device-plugin.yaml \
        -f demo/stack/21-feature-discovery.yaml -f demo/stack/30-exporter.yaml \
        --ignore-not-found --wait
fi

step "OpenXPU: helm install (the operator, its CRD and the default XPUClusterPolicy)"
# upgrade --install: the first run installs, later runs upgrade in place (same values).
helm upgrade --install openxpu helm/openxpu --namespace openxpu --create-namespace \
    --values demo/values-lab.yaml --values demo/values-monitoring.yaml --wait --timeout 5m >/dev/null
helm list --namespace openxpu
step "The operator deploys the stack in order: driver, CDI, validation, device plugin, feature discovery, exporter"
# Ready for the policy's current generation (kubectl wait compares observedGeneration).
if ! kubectl wait xcp/default --for=condition=Ready --timeout=300s; then
    kubectl describe xcp default >&2
    exit 1
fi
kubectl get xcp
kubectl -n openxpu get pods -o wide

step "The node advertises its XPUs"
kubectl get nodes -o custom-columns='NODE:.metadata.name,XPUS:.status.allocatable.openxpu\.io/xpu,PRODUCT:.metadata.labels.openxpu\.io/xpu\.product,MEMORY_MIB:.metadata.labels.openxpu\.io/xpu\.memory,DRIVER:.metadata.labels.openxpu\.io/driver\.version'

step "Validation: the xpu-vectoradd job (one openxpu.io/xpu)"
kubectl delete job xpu-vectoradd --ignore-not-found --wait
kubectl apply -f demo/workloads/vectoradd.yaml
kubectl wait --for=condition=complete job/xpu-vectoradd --timeout=180s
kubectl logs job/xpu-vectoradd

step "A long-running xpu pod: xpu-burn on two XPUs"
kubectl apply -f demo/workloads/burn.yaml
kubectl rollout status deploy/xpu-burn --timeout=180s
sleep 5

step "xpu-smi on the node (in the driver pod)"
# One driver DaemonSet per emulation profile (openxpu-driver-<profile>): find the pod by label.
driver=$(kubectl -n openxpu get pod -l app.kubernetes.io/name=openxpu-driver \
    -o jsonpath='{.items[0].metadata.name}')
kubectl -n openxpu exec "$driver" -c driver -- xpu-smi

step "What Prometheus scrapes: the exporter on :9400"
ip=$(kubectl -n openxpu get pod -l app.kubernetes.io/name=openxpu-exporter \
    -o jsonpath='{.items[0].status.podIP}')
curl -s "http://$ip:9400/metrics" | grep -E '^(openxpu_utilization_ratio|DCGM_FI_DEV_GPU_UTIL)\{' \
    | grep 'pod="xpu-burn' || true

step "Prometheus in the cluster: the headline dashboard panels, queried"
# The Prometheus Operator finds the exporter's ServiceMonitor and configures Prometheus; wait
# (bounded) until every headline panel has data, then print each panel's PromQL and value.
every_panel_has_data() {
    lab monitoring summary --json 2>/dev/null | python3 -c \
        'import json, sys; sys.exit(any(v["value"] == "no data" for v in json.load(sys.stdin)))'
}
for _ in $(seq 60); do every_panel_has_data && break; sleep 2; done
lab monitoring summary

cat <<MSG

The cluster stays up. Try:
  export KUBECONFIG=$KUBECONFIG
  helm=$HELM
  kubectl get xcp                            # State, Operands, XPU nodes, Age
  kubectl get pods -A
  \$helm test openxpu -n openxpu             # xpu-vectoradd on one XPU; the exporter answers
  kubectl -n openxpu exec $driver -c driver -- xpu-smi inject-fault -i 0 --code 48
  kubectl get node -o jsonpath='{.items[0].status.allocatable}'    # one XPU fewer
  kubectl -n openxpu exec $driver -c driver -- xpu-smi clear-fault -i 0
  \$helm uninstall openxpu -n openxpu        # operands, node labels, host files: all gone
  uv run openxpu-lab monitoring summary      # Prometheus: the headline panels, queried
  uv run openxpu-lab down                    # stop everything
MSG
