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
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openxpu_lab import hostdeps
from openxpu_lab.cluster import Lab
from openxpu_lab.node import KUBELET_ROOT_MARKER
from openxpu_lab.paths import StateLayout
from openxpu_lab.settings import LabSettings
from openxpu_lab.shell import LabError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="iptables, cgroups and mounts need root"),
]

CGROUP_PIDS = Path("/sys/fs/cgroup/pids")


def _lab(tmp_path: Path, kubelet_root: Path) -> Lab:
    return Lab(LabSettings(StateLayout(tmp_path / "state"), "n", kubelet_root=kubelet_root))


def _chain_exists(chain: str) -> bool:
    return subprocess.run(["iptables", "-n", "-L", chain], capture_output=True).returncode == 0


@pytest.fixture
def foreign_chains() -> Iterator[list[str]]:
    tag = uuid.uuid4().hex[:6].upper()
    chains = [f"KUBE-FOREIGN-{tag}", f"CNI-FOREIGN-{tag}"]
    for chain in chains:
        subprocess.run(["iptables", "-N", chain], check=True)
    yield chains
    for chain in chains:
        subprocess.run(["iptables", "-X", chain], capture_output=True)


@pytest.fixture
def foreign_pods() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Sleepers in cgroups named like another kubelet's pods: the top-level /kubepods that a
    cgroupfs kubelet uses, and a kubepods under another parent."""
    tag = uuid.uuid4().hex[:6]
    cgroups = [
        CGROUP_PIDS / "kubepods" / f"foreign-{tag}",
        CGROUP_PIDS / f"other-{tag}" / "kubepods",
    ]
    made = [c for c in cgroups if not c.exists()]
    sleepers = []
    for cgroup in cgroups:
        cgroup.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(["sleep", "300"])
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        sleepers.append(proc)
    yield sleepers
    for proc in sleepers:
        proc.kill()
        proc.wait()
    for cgroup in made:
        cgroup.rmdir()
    (CGROUP_PIDS / f"other-{tag}").rmdir()


def test_down_of_a_lab_that_never_came_up_touches_nothing(
    tmp_path: Path,
    foreign_chains: list[str],
    foreign_pods: list[subprocess.Popen[bytes]],
) -> None:
    kubelet_root = tmp_path / "kubelet"
    mount = kubelet_root / "pods" / "x" / "volumes"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "foreign", str(mount)], check=True)
    try:
        report = _lab(tmp_path, kubelet_root).down()
        assert report == []
        assert all(_chain_exists(c) for c in foreign_chains)
        assert [p.poll() for p in foreign_pods] == [None, None]
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


def test_up_refuses_a_kubelet_root_a_running_kubelet_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty root, but a process named kubelet runs on it (a copy of sh, named so)."""
    kubelet_root = tmp_path / "kubelet"
    kubelet_root.mkdir()
    fake = tmp_path / "kubelet-bin" / "kubelet"
    fake.parent.mkdir()
    shutil.copy("/bin/sh", fake)
    # `; :` keeps sh from exec'ing sleep, so the process stays named kubelet.
    proc = subprocess.Popen([fake, "-c", "sleep 60; :", "kubelet", f"--root-dir={kubelet_root}"])
    try:
        message = _refusal(_lab(tmp_path, kubelet_root), monkeypatch)
        assert f"a kubelet that is not the lab's (pid {proc.pid}) runs on {kubelet_root}" in message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
