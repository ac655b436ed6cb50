#!/usr/bin/env bash
# `make demo`: a real one-node Kubernetes (the lab), the OpenXPU stack on it, xpu pods running.
# Idempotent: run it again to see a fresh validation run on the same cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
lab() { uv run --no-sync openxpu-lab "$@"; }

if [ "$(id -u)" != 0 ]; then
    echo "make demo runs a real kubelet and containerd: run it as root (sudo -E make demo)" >&2
    exit 1
fi

step "Cluster: openxpu-lab up (first run builds Kubernetes from source; later runs reuse it)"
lab up
export KUBECONFIG
KUBECONFIG="$(lab kubeconfig --path)"
# The machine's kubectl, or the one the lab built when the machine has none.
KUBECTL=$(uv run --no-sync python -c 'from openxpu_lab.gobuild import kubectl_path; print(kubectl_path())')
kubectl() { "$KUBECTL" "$@"; }

step "OpenXPU stack: driver, device plugin, feature discovery, exporter"
kubectl apply -f demo/stack/
for ds in openxpu-driver openxpu-device-plugin openxpu-feature-discovery openxpu-exporter; do
    kubectl -n openxpu rollout status "ds/$ds" --timeout=180s
done
kubectl -n openxpu get pods -o wide

step "The node advertises its XPUs"
for _ in $(seq 60); do
    count=$(kubectl get nodes -o jsonpath='{.items[0].status.allocatable.openxpu\.io/xpu}')
    [ -n "$count" ] && [ "$count" != 0 ] && break
    sleep 2
done
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
kubectl -n openxpu exec ds/openxpu-driver -- xpu-smi

step "What Prometheus scrapes: the exporter on :9400"
ip=$(kubectl -n openxpu get pod -l app.kubernetes.io/name=openxpu-exporter \
    -o jsonpath='{.items[0].status.podIP}')
curl -s "http://$ip:9400/metrics" | grep -E '^(openxpu_utilization_ratio|DCGM_FI_DEV_GPU_UTIL)\{' \
    | grep 'pod="xpu-burn' || true

cat <<MSG

The cluster stays up. Try:
  export KUBECONFIG=$KUBECONFIG
  kubectl get pods -A
  kubectl -n openxpu exec ds/openxpu-driver -- xpu-smi inject-fault -i 0 --code 48
  kubectl get node -o jsonpath='{.items[0].status.allocatable}'    # one XPU fewer
  kubectl -n openxpu exec ds/openxpu-driver -- xpu-smi clear-fault -i 0
  uv run openxpu-lab down                                         # stop everything
MSG
