"""apiserver-only mode: a real etcd + kube-apiserver for integration tests, then nothing left."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from openxpu_lab import apiserver_only, procs
from openxpu_lab.gobuild import kubectl_path

pytestmark = [
    pytest.mark.integration,
    # The first run on a fresh machine may build kube-apiserver (minutes on 2 cores).
    pytest.mark.timeout(1800),
    pytest.mark.skipif(
        os.geteuid() != 0 and not os.path.exists("/usr/bin/etcd"),
        reason="needs etcd (root installs it with apt)",
    ),
]


def test_apiserver_only_serves_and_cleans_up() -> None:
    kubectl = str(kubectl_path())
    with apiserver_only() as api:
        env = {**os.environ, "KUBECONFIG": str(api.kubeconfig)}
        out = subprocess.run(
            [kubectl, "get", "ns", "-o", "json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        names = {i["metadata"]["name"] for i in json.loads(out)["items"]}
        assert {"default", "kube-system"} <= names
        subprocess.run(
            [kubectl, "create", "ns", "lab-it"],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        pids = [procs.alive(n, api.state_dir / "pids") for n in ("etcd", "kube-apiserver")]
        assert all(pids)
    for pid in pids:
        assert pid is not None
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)
    assert not api.state_dir.exists()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
