"""`down` removes what the lab made and nothing else; `up` will not share a kubelet root.

Another cluster on the host is stood in for by what it would leave: iptables chains named
like kube-proxy's and CNI's, a process in a cgroup called `kubepods`, a mount under its
kubelet root. These tests touch only what they make (their own chains, cgroups, mounts,
state dirs), so they may run beside a running lab.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from openxpu_lab import hostdeps, node
from openxpu_lab.cluster import Lab
from openxpu_lab.node import KUBELET_ROOT_MARKER
from openxpu_lab.paths import StateLayout
from openxpu_lab.settings import LabSettings
from openxpu_lab.shell import LabError

from . import foreign

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="iptables, cgroups and mounts need root"),
]


def _lab(tmp_path: Path, kubelet_root: Path) -> Lab:
    return Lab(LabSettings(StateLayout(tmp_path / "state"), "n", kubelet_root=kubelet_root))


def test_down_of_a_lab_that_never_came_up_touches_nothing(tmp_path: Path) -> None:
    kubelet_root = tmp_path / "kubelet"
    mount = kubelet_root / "pods" / "x" / "volumes"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "foreign", str(mount)], check=True)
    tag = foreign.tag()
    try:
        with (
            foreign.chains("filter", f"KUBE-FOREIGN-{tag}", f"CNI-FOREIGN-{tag}") as chains,
            foreign.pods() as pods,
        ):
            report = _lab(tmp_path, kubelet_root).down()
            assert report == []
            assert all(foreign.chain_exists("filter", c) for c in chains)
            assert [p.poll() for p in pods] == [None, None]
            assert os.path.ismount(mount)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def _refusal(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> str:
    """What `up` says when it refuses; it must refuse before installing or building."""

    def went_on(*args: object) -> None:
        raise AssertionError("up went on past a foreign kubelet root")

    monkeypatch.setattr(hostdeps, "ensure_packages", went_on)
    with pytest.raises(LabError) as refused:
        lab.up()
    assert not lab.layout.root.exists()
    return str(refused.value)


@pytest.mark.parametrize(
    ("files", "refusal"),
    [
        ({"kubelet.sock": "", "pki/kubelet.crt": ""}, "{root} holds another kubelet's files"),
        (
            {KUBELET_ROOT_MARKER: "/elsewhere/lab\n"},
            "{root} belongs to the lab with state dir /elsewhere/lab",
        ),
    ],
    ids=["another-kubelet", "another-lab"],
)
def test_up_refuses_a_kubelet_root_that_is_not_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], refusal: str
) -> None:
    kubelet_root = tmp_path / "kubelet"
    for name, text in files.items():
        (kubelet_root / name).parent.mkdir(parents=True, exist_ok=True)
        (kubelet_root / name).write_text(text)
    message = _refusal(_lab(tmp_path, kubelet_root), monkeypatch)
    assert refusal.format(root=kubelet_root) in message


def _fake_kubelet(tmp_path: Path, *argv: str) -> subprocess.Popen[bytes]:
    """A copy of sh named kubelet, running `argv`; returns once it carries that name."""
    fake = tmp_path / "kubelet-bin" / "kubelet"
    fake.parent.mkdir(exist_ok=True)
    shutil.copy("/bin/sh", fake)
    proc = subprocess.Popen([fake, *argv])
    comm = Path(f"/proc/{proc.pid}/comm")
    deadline = time.monotonic() + 10
    while comm.read_text().strip() != "kubelet" and time.monotonic() < deadline:
        time.sleep(0.01)  # between fork and exec it is still named python
    return proc


def test_up_is_not_stopped_by_a_dead_kubelet_nobody_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `restart kubelet` the old one may linger as a zombie (no command line left,
    so it would read as a kubelet on the default root): it holds nothing."""

    class PastTheCheck(Exception):
        pass

    def past_the_check(*args: object) -> None:
        raise PastTheCheck

    kubelet_root = tmp_path / "kubelet"
    kubelet_root.mkdir()
    monkeypatch.setattr(node, "DEFAULT_KUBELET_ROOT", kubelet_root)
    zombie = _fake_kubelet(tmp_path, "-c", "exit 0")
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    monkeypatch.setattr(hostdeps, "ensure_packages", past_the_check)
    try:
        with pytest.raises(PastTheCheck):
            _lab(tmp_path, kubelet_root).up()
    finally:
        zombie.wait()


def test_up_refuses_a_kubelet_root_a_running_kubelet_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty root, but a process named kubelet runs on it (a copy of sh, named so)."""
    kubelet_root = tmp_path / "kubelet"
    kubelet_root.mkdir()
    # `; :` keeps sh from exec'ing sleep, so the process stays named kubelet.
    proc = _fake_kubelet(tmp_path, "-c", "sleep 60; :", "kubelet", f"--root-dir={kubelet_root}")
    try:
        message = _refusal(_lab(tmp_path, kubelet_root), monkeypatch)
        assert f"a kubelet that is not the lab's (pid {proc.pid}) runs on {kubelet_root}" in message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
