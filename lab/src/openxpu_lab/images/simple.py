"""The two tiny images every lab needs: the sandbox (pause) image and a busybox image."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from openxpu_lab.images import oci
from openxpu_lab.shell import run

PAUSE_NAME = "localhost/openxpu-lab/pause:1"
BUSYBOX_NAME = "localhost/openxpu-lab/busybox:1.35"

# The pod sandbox's only job: hold the namespaces, reap zombies, exit on TERM/INT.
PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void quit(int s) { (void)s; _exit(0); }
int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


def build_pause(out: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "pause.c").write_text(PAUSE_C)
        root = t / "rootfs"
        root.mkdir()
        run(["gcc", "-static", "-Os", "-s", "-o", root / "pause", t / "pause.c"])
        for d in ("proc", "sys", "dev"):
            (root / d).mkdir()
        return oci.pack(root, PAUSE_NAME, {"Entrypoint": ["/pause"]}, out)


def build_busybox(out: Path) -> str:
    """busybox-static from Debian plus a symlink per applet: a shell image for smoke tests."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        (root / "bin").mkdir(parents=True)
        shutil.copy2("/usr/bin/busybox", root / "bin" / "busybox")
        applets = run(["/usr/bin/busybox", "--list"]).stdout.split()
        for a in applets:
            if a != "busybox":
                (root / "bin" / a).symlink_to("busybox")
        for d in ("proc", "sys", "dev", "etc", "tmp"):
            (root / d).mkdir()
        (root / "tmp").chmod(0o1777)
        (root / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        )
        (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
        cfg: oci.ImageConfig = {"Env": ["PATH=/bin"], "Cmd": ["sh"]}
        return oci.pack(root, BUSYBOX_NAME, cfg, out)
