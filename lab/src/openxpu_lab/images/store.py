"""Getting the lab's images into containerd's k8s.io namespace (import, never pull)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from openxpu_lab import node, paths
from openxpu_lab.images import oci, simple
from openxpu_lab.progress import Progress
from openxpu_lab.settings import LabSettings
from openxpu_lab.shell import run


def archive_name_digest(archive: Path) -> tuple[str, str]:
    with tarfile.open(archive) as tar:
        f = tar.extractfile("index.json")
        assert f is not None
        m = json.load(f)["manifests"][0]
    return str(m["annotations"]["io.containerd.image.name"]), str(m["digest"])


def present(s: LabSettings) -> dict[str, str]:
    """Image name -> manifest digest, as containerd has them."""
    out = run(node.ctr(s, "images", "ls"), timeout=60).stdout.splitlines()[1:]
    found = {}
    for line in out:
        parts = line.split()
        if len(parts) >= 3:
            found[parts[0]] = parts[2]
    return found


def import_archive(s: LabSettings, archive: Path, progress: Progress) -> bool:
    """Import unless containerd already has this exact image. True when it imported."""
    name, digest = archive_name_digest(archive)
    if present(s).get(name) == digest:
        return False
    with progress.step(f"importing {name} into containerd"):
        # ctr unpacks into the CRI's snapshotter (overlayfs) on import: no delay at pod start.
        run(node.ctr(s, "images", "import", str(archive)), timeout=900)
    return True


def ensure_basic_archives(progress: Progress) -> list[Path]:
    d = paths.images_dir()
    d.mkdir(parents=True, exist_ok=True)
    pause = d / "pause.tar"
    busybox = d / "busybox.tar"
    if not pause.exists():
        with progress.step("building the pause image (static C)"):
            simple.build_pause(pause)
    if not busybox.exists():
        with progress.step("building the busybox image (busybox-static)"):
            simple.build_busybox(busybox)
    return [pause, busybox]


def image_names() -> dict[str, str]:
    from openxpu_lab.images.openxpu import OPENXPU_NAME

    return {
        "pause": oci.full_name(simple.PAUSE_NAME),
        "busybox": oci.full_name(simple.BUSYBOX_NAME),
        "openxpu": oci.full_name(OPENXPU_NAME),
    }
