"""The lab's real nodes: names, addresses, pod ranges, profiles, and the CLI around them."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from openxpu_lab import cli, node, nodes
from openxpu_lab.cluster import Lab
from openxpu_lab.paths import StateLayout
from openxpu_lab.settings import (
    NODE_IP,
    NODE_NETWORK,
    POD_CIDR,
    PROFILE_LABEL,
    LabSettings,
    NodeSpec,
    node_specs,
    parse_node_profile,
)
from openxpu_lab.shell import LabError

pytestmark = pytest.mark.unit


def test_node_one_is_the_hosts_node_and_workers_are_numbered() -> None:
    specs = node_specs("lab", 3, {})
    assert [s.name for s in specs] == ["lab", "lab-worker-1", "lab-worker-2"]
    assert [s.ip for s in specs] == [NODE_IP, "10.87.0.11", "10.87.0.12"]
    assert [s.pod_cidr for s in specs] == ["10.88.0.0/24", "10.88.1.0/24", "10.88.2.0/24"]
    assert [s.pod_gateway for s in specs] == ["10.88.0.1", "10.88.1.1", "10.88.2.1"]
    assert [s.netns for s in specs[1:]] == ["oxlab-w1", "oxlab-w2"]
    assert [s.cgroup_root for s in specs] == ["openxpu-lab", "openxpu-lab-w1", "openxpu-lab-w2"]


def test_addresses_never_overlap_and_stay_in_the_lab_ranges() -> None:
    specs = node_specs("lab", 200, {})
    ips = [ipaddress.ip_address(s.ip) for s in specs]
    cidrs = [ipaddress.ip_network(s.pod_cidr) for s in specs]
    assert len(set(ips)) == len(ips) and len(set(cidrs)) == len(cidrs)
    assert all(ip in ipaddress.ip_network(NODE_NETWORK) for ip in ips)
    assert ipaddress.ip_address("10.87.0.2") not in ips  # KWOK's fake node address
    assert all(c.subnet_of(ipaddress.ip_network(POD_CIDR)) for c in cidrs)  # type: ignore[arg-type]
    # Host link names have 15 characters at most.
    assert max(len(s.netns) for s in specs) <= 15


@pytest.mark.parametrize("count", [0, 201])
def test_node_count_out_of_range_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="--nodes must be between 1 and 200"):
        node_specs("lab", count, {})


def test_profiles_by_short_or_full_name() -> None:
    specs = node_specs("lab", 3, {"worker-2": "x1-4", "lab": "x1-8"})
    assert [s.profile for s in specs] == ["x1-8", None, "x1-4"]
    assert node_specs("lab", 2, {"lab-worker-1": "x1-4"})[1].profile == "x1-4"


def test_a_profile_for_no_node_names_the_nodes() -> None:
    with pytest.raises(ValueError) as err:
        node_specs("lab", 2, {"worker-2": "x1-4"})
    assert str(err.value) == (
        "--node-profile names no node of this lab: worker-2 (nodes: lab, lab-worker-1)"
    )


@pytest.mark.parametrize("text", ["worker-2", "=x1-4", "worker-2="])
def test_node_profile_syntax(text: str) -> None:
    with pytest.raises(ValueError, match="expected NODE=PROFILE"):
        parse_node_profile(text)
    assert parse_node_profile("worker-2=x1-4") == ("worker-2", "x1-4")


def _lab(tmp_path: Path) -> Lab:
    return Lab(LabSettings(StateLayout(tmp_path), "lab"))


def test_recorded_nodes_are_kept_until_asked_otherwise(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    assert [s.name for s in lab.node_specs()] == ["lab"]
    lab._save_nodes(lab._wanted_nodes(3, {"worker-2": "x1-4"}))
    assert json.loads(lab.layout.node_list.read_text()) == {
        "count": 3,
        "profiles": {"lab-worker-2": "x1-4"},
    }
    # `up` alone keeps 3 nodes and their profiles; a new profile is added to them.
    kept = lab._wanted_nodes(None, {"worker-1": "x1-8"})
    assert [(s.name, s.profile) for s in kept] == [
        ("lab", None),
        ("lab-worker-1", "x1-8"),
        ("lab-worker-2", "x1-4"),
    ]
    # `--nodes N` starts over: N nodes, only the profiles given now.
    assert [s.profile for s in lab._wanted_nodes(2, None)] == [None, None]
    assert [w.node_name for w in lab.workers()] == ["lab-worker-1", "lab-worker-2"]


def test_bad_node_requests_are_clear_errors(tmp_path: Path) -> None:
    lab = _lab(tmp_path)
    with pytest.raises(LabError, match="not a valid label value"):
        lab._wanted_nodes(2, {"worker-1": "x1 4"})
    with pytest.raises(LabError, match="names no node of this lab: worker-5"):
        lab._wanted_nodes(2, {"worker-5": "x1-4"})
    with pytest.raises(LabError, match=r"no node lab-worker-9 in this lab \(nodes: lab\)"):
        lab.node_stop("lab-worker-9")


def test_cli_node_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        ["up", "--nodes", "3", "--node-profile", "worker-2=x1-4", "--node-profile", "lab=x1-8"]
    )
    assert args.nodes == 3
    assert dict(args.node_profile) == {"worker-2": "x1-4", "lab": "x1-8"}
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["up", "--nodes", "0"])
    assert exit_.value.code == 2
    assert "--nodes: 0 is not between 1 and 200" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["up", "--node-profile", "x1-4"])
    assert "expected NODE=PROFILE" in capsys.readouterr().err
    assert cli.main(["--state-dir", str(tmp_path), "node", "kill", "nope"]) == 1
    assert "error: no node nope in this lab" in capsys.readouterr().err
    assert cli.main(["--state-dir", str(tmp_path), "logs", "kubelet", "--node", "worker-1"]) == 1
    assert "error: no node worker-1 in this lab" in capsys.readouterr().err


def test_a_workers_configs_carry_its_own_address_range_and_cgroup(tmp_path: Path) -> None:
    lab = LabSettings(StateLayout(tmp_path), "lab")
    w = lab.for_worker(node_specs("lab", 3, {"worker-2": "x1-4"})[2])
    assert w.layout.root == tmp_path / "nodes" / "lab-worker-2"
    assert w.server_url == "https://10.87.0.1:6443"  # its loopback is its own
    assert lab.server_url == "https://127.0.0.1:6443"
    cni = json.loads(node.cni_config(w))["plugins"][0]["ipam"]
    assert cni["ranges"] == [[{"subnet": "10.88.2.0/24", "gateway": "10.88.2.1"}]]
    assert cni["dataDir"] == str(w.layout.cni_ipam_dir)
    assert f"--node-ip={w.node.ip}" in node.kubelet_argv(w, _creds(tmp_path))
    assert f"--node-labels={PROFILE_LABEL}=x1-4" in node.kubelet_argv(w, _creds(tmp_path))
    assert not any(a.startswith("--node-labels") for a in node.kubelet_argv(lab, _creds(tmp_path)))


def _creds(tmp_path: Path) -> node.Credentials:
    class Fake:
        kubelet_kubeconfig = tmp_path / "kubelet.kubeconfig"

    return Fake()  # type: ignore[return-value]


def test_worker_commands_enter_both_namespaces(tmp_path: Path) -> None:
    lab = LabSettings(StateLayout(tmp_path), "lab")
    spec = NodeSpec(1, "lab-worker-1")
    assert nodes.wrap(lab, spec, ["kubelet", "--v=1"]) == [
        "nsenter",
        f"--mount={tmp_path}/nodes/ns/lab-worker-1",
        "--net=/run/netns/oxlab-w1",
        "--",
        "kubelet",
        "--v=1",
    ]


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")
def test_a_workers_mount_namespace_hides_the_hosts_node_files(tmp_path: Path) -> None:
    """The persistent mount namespace alone (no network, no lab): what the host's node has
    under the private paths and in /dev is not there for the worker, and back."""
    lab = LabSettings(StateLayout(tmp_path), "lab")
    spec = NodeSpec(7, "lab-worker-7")
    marker = Path("/run/openxpu") / f"host-only-{os.getpid()}"
    made_dir = not marker.parent.exists()
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("host")
    try:
        nodes.ensure_mounts(lab, spec)
        inside = ["nsenter", f"--mount={nodes.mount_ns_file(lab, spec)}", "--"]
        probe = subprocess.run(
            [*inside, "sh", "-c", "ls /run/openxpu; ls /dev; echo w > /run/openxpu/own"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert marker.name not in probe.stdout
        assert "null" in probe.stdout.split() and "xpu0" not in probe.stdout.split()
        assert not (marker.parent / "own").exists()
        assert (nodes.private_dir(lab, spec, "/run/openxpu") / "own").read_text() == "w\n"
        nodes.ensure_mounts(lab, spec)  # idempotent
    finally:
        marker.unlink()
        if made_dir:
            marker.parent.rmdir()
        nodes.remove_namespaces(lab, spec)
        nodes.release_ns_dir(lab)
    assert not nodes.leftovers(lab, spec)
    assert not [m for m in _mounts() if str(tmp_path) in m]


def _mounts() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")
def test_a_kubelet_in_another_mount_namespace_does_not_hold_our_root(tmp_path: Path) -> None:
    """A worker's kubelet runs on /var/lib/kubelet of its own mount namespace: it does not
    make node 1's kubelet root foreign."""
    root = tmp_path / "kubelet"
    root.mkdir()
    fake = tmp_path / "bin" / "kubelet"
    fake.parent.mkdir()
    shutil.copy("/bin/sh", fake)
    lab = LabSettings(StateLayout(tmp_path / "state"), "lab", kubelet_root=root)
    argv = [str(fake), "-c", "sleep 30", "kubelet", f"--root-dir={root}"]
    same_ns = subprocess.Popen(argv)
    other_ns = subprocess.Popen(["unshare", "--mount", *argv])
    try:
        time.sleep(0.5)
        reason = node.foreign_kubelet_root(lab, None)
        assert reason == f"a kubelet that is not the lab's (pid {same_ns.pid}) runs on {root}"
        same_ns.kill()
        same_ns.wait()
        assert node.foreign_kubelet_root(lab, None) is None
    finally:
        for p in (same_ns, other_ns):
            p.kill()
            p.wait()
