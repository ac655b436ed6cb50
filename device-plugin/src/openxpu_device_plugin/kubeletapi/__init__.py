"""The kubelet device plugin API v1beta1, as generated Python stubs (committed).

`deviceplugin.proto` is an unmodified copy of `pkg/apis/deviceplugin/v1beta1/api.proto` from
the kubernetes/kubelet repository (Apache-2.0), commit 63b3249724f7 (identical to kubelet
v0.34 .. v0.36); its `package v1beta1;` line fixes the method paths the kubelet calls
(`/v1beta1.Registration/Register`, `/v1beta1.DevicePlugin/Allocate`, ...).

Regenerate (grpcio-tools and mypy-protobuf are in this project's dev group), from the
repository root::

    cd device-plugin/src && PATH=$PWD/../../.venv/bin:$PATH python -m grpc_tools.protoc -I. \\
        --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \\
        openxpu_device_plugin/kubeletapi/deviceplugin.proto

`podresources.proto` is the part of the PodResources v1 API the scope reconciler reads
(`List`), under a package of ours (the file says why); regenerate it the same way, with
`--python_out=. --mypy_out=.` only (the call is made by method path, no service stub).

The `.pyi` files type the stubs for `mypy --strict`; ruff skips the generated files.
"""

from openxpu_device_plugin.kubeletapi import deviceplugin_pb2 as pb
from openxpu_device_plugin.kubeletapi import deviceplugin_pb2_grpc as rpc

API_VERSION = "v1beta1"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

__all__ = ["API_VERSION", "HEALTHY", "UNHEALTHY", "pb", "rpc"]
