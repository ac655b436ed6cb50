"""Pack a root filesystem directory into an OCI image archive that `ctr images import`
(and `docker load`, via the docker manifest.json alongside) accepts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, TypedDict

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# Fixed mtime: the same rootfs gives the same layer digest, so re-imports are no-ops.
EPOCH = 0


class ImageConfig(TypedDict, total=False):
    Env: list[str]
    Entrypoint: list[str]
    Cmd: list[str]
    WorkingDir: str
    User: str
    Labels: dict[str, str]


def _skip(rel: str) -> bool:
    # Runtime-provided trees: the container runtime mounts its own.
    return rel in ("proc", "sys", "dev") or rel.startswith(("proc/", "sys/", "dev/"))


def write_layer(rootfs: Path, out: Path) -> None:
    """An uncompressed tar of `rootfs`, sorted, with fixed mtimes (fast on 2 cores)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        entries: list[str] = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, rootfs)
            for name in sorted(dirnames + filenames):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                entries.append(rel)
        for rel in entries:
            full = rootfs / rel
            info = tar.gettarinfo(str(full), arcname=rel)
            if _skip(rel) and rel not in ("proc", "sys", "dev"):
                continue
            info.mtime = EPOCH
            info.uname = info.gname = ""
            if info.isreg():
                with full.open("rb") as fh:
                    tar.addfile(info, fh)
            elif (
                info.isdir()
                or info.issym()
                or info.islnk()
                or info.ischr()
                or info.isblk()
                or info.isfifo()
            ):
                tar.addfile(info)


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = EPOCH
    tar.addfile(info, io.BytesIO(data))


def pack(rootfs: Path, name: str, config: ImageConfig, out: Path) -> str:
    """Write the OCI archive for `rootfs` named `name` to `out`; returns the manifest digest."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        layer = Path(tmp) / "layer.tar"
        write_layer(rootfs, layer)
        layer_digest = _sha256_file(layer)
        cfg: dict[str, Any] = {
            "architecture": "amd64",
            "os": "linux",
            "config": dict(config),
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
            "history": [{"created_by": "openxpu-lab"}],
        }
        cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
        cfg_digest = hashlib.sha256(cfg_bytes).hexdigest()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": f"sha256:{cfg_digest}",
                "size": len(cfg_bytes),
            },
            "layers": [
                {
                    "mediaType": OCI_LAYER,
                    "digest": f"sha256:{layer_digest}",
                    "size": layer.stat().st_size,
                }
            ],
        }
        man_bytes = json.dumps(manifest, sort_keys=True).encode()
        man_digest = hashlib.sha256(man_bytes).hexdigest()
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": f"sha256:{man_digest}",
                    "size": len(man_bytes),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": full_name(name),
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
        docker_manifest = [
            {
                "Config": f"blobs/sha256/{cfg_digest}",
                "RepoTags": [name],
                "Layers": [f"blobs/sha256/{layer_digest}"],
            }
        ]
        part = out.with_suffix(".part")
        with tarfile.open(part, "w") as tar:
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
            _add_bytes(tar, "index.json", json.dumps(index).encode())
            _add_bytes(tar, "manifest.json", json.dumps(docker_manifest).encode())
            _add_bytes(tar, f"blobs/sha256/{cfg_digest}", cfg_bytes)
            _add_bytes(tar, f"blobs/sha256/{man_digest}", man_bytes)
            tar.add(str(layer), arcname=f"blobs/sha256/{layer_digest}")
        part.rename(out)
    return f"sha256:{man_digest}"


def full_name(name: str) -> str:
    """Docker-style normalisation: `openxpu/x:1` -> `docker.io/openxpu/x:1`."""
    first = name.split("/", 1)[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def archive_layout(layout: Path, name: str, out: Path) -> str:
    """Tar the OCI layout directory `layout` (one image, e.g. from `buildah push oci:`) into
    the archive `out`, its index naming the image for containerd (`ctr images import` keeps
    only names it is given this way); returns the manifest digest."""
    index = json.loads((layout / "index.json").read_text())
    (desc,) = index["manifests"]
    desc.setdefault("annotations", {})["io.containerd.image.name"] = full_name(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".part")
    with tarfile.open(part, "w") as tar:
        _add_bytes(tar, "oci-layout", (layout / "oci-layout").read_bytes())
        _add_bytes(tar, "index.json", json.dumps(index).encode())
        for blob in sorted((layout / "blobs" / "sha256").iterdir()):
            tar.add(str(blob), arcname=f"blobs/sha256/{blob.name}")
    part.rename(out)
    return str(desc["digest"])
