"""OpenXPU lab: a real single-node Kubernetes cluster on one Linux machine, without Docker.

`apiserver_only()` gives integration tests a real API server (etcd + kube-apiserver).
"""

from openxpu_lab.envtest import ApiServer, apiserver_only

__all__ = ["ApiServer", "apiserver_only"]
