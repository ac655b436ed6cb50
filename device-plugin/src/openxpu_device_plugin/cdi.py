"""The CDI spec (`/var/run/cdi/openxpu.io-xpu.yaml`): what a container runtime injects for
`openxpu.io/xpu=<uuid>` (also `=<index>` and `=all`): the device nodes. xpud's socket is
not in it: each container gets its own scope's directory from Allocate, next to the CDI
devices, and never the host's /run/openxpu.

Written atomically (temp file + rename) and only when its content changes, so a runtime
reading it never sees half a file and an unchanged inventory costs no write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import NotRequired, TypedDict

import yaml

from openxpu_device_plugin.resources import CDI_KIND, CONTAINER_RUN_DIR, Xpu

# 0.5.0 is the first version with `hostPath` on device nodes, and what containerd 1.7 reads.
CDI_VERSION = "0.5.0"
SPEC_NAME = "openxpu.io-xpu.yaml"


class DeviceNode(TypedDict):
    path: str
    hostPath: str
    permissions: str


class CdiMount(TypedDict):
    hostPath: str
    containerPath: str
    options: list[str]


class ContainerEdits(TypedDict, total=False):
    env: list[str]
    deviceNodes: list[DeviceNode]
    mounts: list[CdiMount]


class CdiDevice(TypedDict):
    name: str
    containerEdits: ContainerEdits


class CdiSpec(TypedDict):
    cdiVersion: str
    kind: str
    devices: list[CdiDevice]
    containerEdits: NotRequired[ContainerEdits]


def _edits(x: Xpu) -> ContainerEdits:
    if x.is_device_node:
        return {
            "deviceNodes": [
                {"path": x.container_path, "hostPath": x.device_path, "permissions": "rw"}
            ]
        }
    # An emulated node that is a plain file: bind it, as a runtime cannot mknod a copy.
    return {
        "mounts": [
            {
                "hostPath": x.device_path,
                "containerPath": x.container_path,
                "options": ["rw", "nosuid", "bind"],
            }
        ]
    }


def build_spec(xpus: list[Xpu], xpud_socket: str) -> CdiSpec:
    devices: list[CdiDevice] = []
    for x in xpus:
        devices.append({"name": x.uuid, "containerEdits": _edits(x)})
        devices.append({"name": str(x.index), "containerEdits": _edits(x)})
    if xpus:
        merged: ContainerEdits = {}
        for x in xpus:
            for key, items in _edits(x).items():
                merged.setdefault(key, []).extend(items)  # type: ignore[misc]
        devices.append({"name": "all", "containerEdits": merged})
    sock = PurePosixPath(xpud_socket)
    return {
        "cdiVersion": CDI_VERSION,
        "kind": CDI_KIND,
        "devices": devices,
        # Where the client library looks; the socket there is mounted per allocation.
        "containerEdits": {"env": [f"XPUD_SOCKET={CONTAINER_RUN_DIR}/{sock.name}"]},
    }


def write_spec(spec_dir: Path, spec: CdiSpec) -> bool:
    """Write the spec if it changed; True when the file was (re)written."""
    path = spec_dir / SPEC_NAME
    text = yaml.safe_dump(dict(spec), sort_keys=False)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    spec_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=spec_dir, prefix=".openxpu-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
