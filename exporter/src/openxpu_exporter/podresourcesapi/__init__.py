"""Generated stubs of the kubelet PodResources v1 API (k8s.io/kubelet/pkg/apis/podresources/v1).

Regenerate with exporter/scripts/gen_podresources.sh; do not edit the *_pb2* files by hand.
"""
