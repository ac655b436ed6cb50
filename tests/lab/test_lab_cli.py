"""The CLI as scripts and the Makefile use it: what each command prints and returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openxpu_lab import cli, kube, pki
from openxpu_lab.cluster import COMPONENTS, Lab
from openxpu_lab.kubeconfig import write_kubeconfig
from openxpu_lab.settings import default_node_name

pytestmark = pytest.mark.unit


def _run(tmp_path: Path, *argv: str) -> int:
    return cli.main(["--state-dir", str(tmp_path), *argv])


def test_up_defaults_leave_kwok_nodes_alone() -> None:
    args = cli.build_parser().parse_args(["up"])
    assert args.kwok_nodes is None
    assert not args.no_openxpu_image


def test_up_refuses_a_negative_kwok_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["up", "--kwok-nodes", "-1"])
    assert exit_.value.code == 2
    assert "--kwok-nodes: -1 is negative" in capsys.readouterr().err


def test_up_without_root_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert _run(tmp_path, "up") == 1
    assert capsys.readouterr().err.strip() == (
        "openxpu-lab: error: openxpu-lab up needs root (it runs containerd, the kubelet, CNI)"
    )
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_unknown_component_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("logs", "restart"):
        with pytest.raises(SystemExit) as exit_:
            cli.build_parser().parse_args([command, "kube-nothing"])
        assert exit_.value.code == 2
        assert "invalid choice: 'kube-nothing'" in capsys.readouterr().err


def test_logs_prints_the_tail_of_any_component(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "logs").mkdir()
    for component in COMPONENTS:
        lines = [f"{component} line {i}" for i in range(5)]
        (tmp_path / "logs" / f"{component}.log").write_text("\n".join(lines) + "\n")
        assert _run(tmp_path, "logs", component, "-n", "2") == 0
        assert capsys.readouterr().out.splitlines() == lines[-2:]


def test_logs_of_a_component_that_never_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, "logs", "kubelet") == 1
    err = capsys.readouterr().err
    assert err.startswith("openxpu-lab: error: no log for kubelet at ")
    assert "Traceback" not in err


def test_kubeconfig_prints_the_file_or_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kc = tmp_path / "admin.kubeconfig"
    kc.write_text('{"kind": "Config"}\n')
    assert _run(tmp_path, "kubeconfig", "--path") == 0
    assert capsys.readouterr().out == f"{kc}\n"
    assert _run(tmp_path, "kubeconfig") == 0
    assert capsys.readouterr().out == '{"kind": "Config"}\n'


def test_kubeconfig_without_a_lab_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, "kubeconfig") == 1
    assert "run `openxpu-lab up` first" in capsys.readouterr().err


def test_status_of_a_lab_that_never_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-2]] == list(COMPONENTS)
    assert all(line.split()[1] == "stopped" for line in lines[:-2])
    assert lines[-2].split() == ["node", "Ready", "False"]
    # Every node on a line of its own: the lab that never ran has node 1 alone.
    assert lines[-1] == (
        f"node {default_node_name()}: NotReady ip=10.87.0.1 pods=10.88.0.0/24 "
        "containerd=stopped kubelet=stopped kube-proxy=stopped"
    )


def test_status_json_of_a_lab_that_never_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status == {
        "state_dir": str(tmp_path),
        "components": dict.fromkeys(COMPONENTS),
        "node_ready": False,
        "nodes": {
            default_node_name(): {
                "ip": "10.87.0.1",
                "pod_cidr": "10.88.0.0/24",
                "profile": None,
                "components": dict.fromkeys(("containerd", "kubelet", "kube-proxy")),
                "ready": False,
            }
        },
    }


def test_load_images_without_a_running_lab_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, "load-images") == 1
    assert "containerd is not running: run `openxpu-lab up` first" in capsys.readouterr().err


def test_an_api_server_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lab whose API server refuses the lab's own calls (here: nothing listens where the
    kubeconfig points) ends in one line, not a traceback."""

    def restart(lab: Lab, component: str) -> None:
        kube.core(kube.api_client(kubeconfig)).read_node("n", _request_timeout=2)

    kubeconfig = tmp_path / "admin.kubeconfig"
    ca = pki.ensure_ca(tmp_path)
    client = pki.ensure_cert(tmp_path, ca, "admin", "admin")
    write_kubeconfig(kubeconfig, "https://127.0.0.1:9", ca.cert, client, "admin")
    monkeypatch.setattr(Lab, "restart", restart)
    assert _run(tmp_path, "restart", "kubelet") == 1
    err = capsys.readouterr().err
    assert err.startswith("openxpu-lab: error: the API server did not answer: ")
    assert err.count("\n") == 1
