"""OCI archives made by the lab: digests, names, deterministic layers."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from openxpu_lab.images import oci

pytestmark = pytest.mark.unit


def _rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "alias").symlink_to("tool")
    (root / "proc").mkdir()
    return root


def test_pack_is_consistent_and_importable_shape(tmp_path: Path) -> None:
    out = tmp_path / "img.tar"
    digest = oci.pack(_rootfs(tmp_path), "openxpu/test:1", {"Cmd": ["/bin/tool"]}, out)
    with tarfile.open(out) as tar:
        blob = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    index = json.loads(blob["index.json"])
    desc = index["manifests"][0]
    assert desc["digest"] == digest
    assert desc["annotations"]["io.containerd.image.name"] == "docker.io/openxpu/test:1"
    manifest = json.loads(blob[f"blobs/sha256/{digest.split(':')[1]}"])
    # Every blob is stored under its own sha256.
    for d in [manifest["config"], *manifest["layers"]]:
        data = blob[f"blobs/sha256/{d['digest'].split(':')[1]}"]
        assert hashlib.sha256(data).hexdigest() == d["digest"].split(":")[1]
        assert len(data) == d["size"]
    config = json.loads(blob[f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}"])
    assert config["config"]["Cmd"] == ["/bin/tool"]
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    docker = json.loads(blob["manifest.json"])
    assert docker[0]["RepoTags"] == ["openxpu/test:1"]


def test_same_rootfs_same_digest(tmp_path: Path) -> None:
    root = _rootfs(tmp_path)
    a = oci.pack(root, "x/y:1", {}, tmp_path / "a.tar")
    b = oci.pack(root, "x/y:1", {}, tmp_path / "b.tar")
    assert a == b


@pytest.mark.parametrize(
    ("short", "full"),
    [
        ("busybox", "docker.io/library/busybox"),
        ("openxpu/openxpu:dev", "docker.io/openxpu/openxpu:dev"),
        ("localhost/openxpu-lab/pause:1", "localhost/openxpu-lab/pause:1"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
    ],
)
def test_full_name(short: str, full: str) -> None:
    assert oci.full_name(short) == full
