"""Shared e2e fixtures: a real cluster from the lab (`openxpu-lab up`), reused when running.

`lab_cluster` (session) yields a `LabCluster`: kubeconfig path, node name, image names and a
`kubectl()` helper. If the session started the lab it brings it down at the end (set
OPENXPU_LAB_KEEP=1 to keep it); a lab that was already running is left as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from openxpu_lab.cluster import Lab
from openxpu_lab.gobuild import kubectl_path
from openxpu_lab.paths import default_state_dir
from openxpu_lab.settings import LabSettings

# The session's first lab test may pay for a cold build of Kubernetes (minutes on 2 cores).
COLD_START_TIMEOUT = 2400


@dataclass(frozen=True)
class LabCluster:
    lab: Lab
    kubeconfig: Path
    node_name: str
    images: dict[str, str]  # "pause" / "busybox" / "openxpu" -> full image name
    kubectl_bin: str

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        return subprocess.run(
            [self.kubectl_bin, *args],
            env=env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input_text,
        )

    def kubectl_json(self, *args: str) -> dict[str, object]:
        out: dict[str, object] = json.loads(self.kubectl(*args, "-o", "json").stdout)
        return out

    @contextmanager
    def pod(self, prefix: str, image: str, *command: str) -> Iterator[str]:
        """`kubectl run` a one-container pod (restartPolicy Never) from a local image
        ("busybox", "openxpu", or a full name); deleted on exit. Yields its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kubectl(
            "run",
            name,
            f"--image={self.images.get(image, image)}",
            "--image-pull-policy=Never",
            "--restart=Never",
            "--",
            *command,
        )
        try:
            yield name
        finally:
            self.kubectl("delete", "pod", name, "--grace-period=1", "--wait=false", check=False)

    def restart_kubelet(self) -> None:
        """Stop the kubelet by pid and start it again; returns when the node is Ready."""
        self.lab.restart("kubelet")

    def wait_pod_phase(
        self, name: str, phases: set[str], timeout: float = 120, namespace: str = "default"
    ) -> str:
        deadline = time.monotonic() + timeout
        phase = ""
        while time.monotonic() < deadline:
            r = self.kubectl(
                "get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False
            )
            phase = r.stdout.strip()
            if phase in phases:
                return phase
            time.sleep(0.5)
        desc = self.kubectl("describe", "pod", name, "-n", namespace, check=False).stdout
        raise AssertionError(f"pod {name} is {phase or 'unknown'}, wanted {phases}:\n{desc}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give the first test that starts the lab room for a cold build; the rest keep theirs."""
    for item in items:
        if "lab_cluster" in getattr(item, "fixturenames", ()):
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(COLD_START_TIMEOUT))
            break


@pytest.fixture(scope="session")
def lab_cluster() -> Iterator[LabCluster]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("the lab runs a real kubelet and containerd: Linux and root only")
    lab = Lab(LabSettings.for_state(default_state_dir()))
    started = not lab.is_up()
    if started:
        res = lab.up()
        print(
            f"\nlab up: {res.ready_seconds:.1f}s to node Ready "
            f"(built {res.built_seconds:.0f}s this run)",
            file=sys.stderr,
        )
    else:
        # Reused: still make sure the images of the current sources are in containerd.
        lab.load_images()
    info = json.loads(lab.layout.info.read_text())
    cluster = LabCluster(
        lab=lab,
        kubeconfig=lab.layout.admin_kubeconfig,
        node_name=lab.settings.node_name,
        images=info["images"],
        kubectl_bin=str(kubectl_path()),
    )
    yield cluster
    if started and not os.environ.get("OPENXPU_LAB_KEEP"):
        lab.down()
        left = lab.leftovers()
        assert not left, f"openxpu-lab down left things behind: {left}"
