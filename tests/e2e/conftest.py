"""Shared e2e fixtures: a real cluster from the lab (`openxpu-lab up`), reused when running.

`lab_cluster` (session) yields a `LabCluster`: kubeconfig path, node name, image names and a
`kubectl()` helper. If the session started the lab it brings it down at the end (set
OPENXPU_LAB_KEEP=1 to keep it); a lab that was already running is left as it was.

Tests leave the cluster as they found it: a user's running `make demo` must survive `make
test`. The OpenXPU stack found at the start of the session (`LabCluster.foreign_stack`: a
policy, an operator, a driver DaemonSet) belongs to someone else. Tests that install and
remove a stack of their own call `require_no_foreign_stack()` and skip, saying why, when
there is one (in CI there is none, so they run); tests that only need a Ready stack take
`openxpu_release`, which reuses a Ready foreign Helm release and otherwise installs one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openxpu_lab import gobuild, paths
from openxpu_lab.cluster import Lab
from openxpu_lab.gobuild import kubectl_path
from openxpu_lab.paths import default_state_dir
from openxpu_lab.progress import Progress
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
    # What of an OpenXPU stack the cluster held when the session began (not ours to remove).
    foreign_stack: tuple[str, ...] = ()

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

    def helm(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """The lab's helm (built from its Go module at the pinned version) on this cluster."""
        gobuild.ensure(gobuild.helm_tool(), Progress(quiet=True))
        argv = [str(paths.helm_bin_dir() / "helm"), "--kubeconfig", str(self.kubeconfig), *args]
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}): {out.stderr}")
        return out

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


Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]
STACK_NAMESPACE = "openxpu"
CHART = Path(__file__).resolve().parents[2] / "helm" / "openxpu"
LAB_VALUES = Path(__file__).resolve().parents[2] / "demo" / "values-lab.yaml"
# What marks an OpenXPU stack, whoever installed it (chart, operator, demo/stack by hand).
DRIVER_SELECTOR = "app.kubernetes.io/name=openxpu-driver"
OPERATOR_SELECTOR = "app.kubernetes.io/part-of=openxpu,app.kubernetes.io/component=operator"


def _items(kubectl: Kubectl, *args: str) -> list[dict[str, Any]]:
    """Items of a `kubectl get`, none when the type is unknown (no CRD installed)."""
    out = kubectl("get", *args, "-o", "json", check=False)
    if out.returncode != 0:
        if "doesn't have a resource type" in out.stderr:
            return []
        raise AssertionError(f"kubectl get {' '.join(args)}: {out.stderr}")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


def installed_stack(kubectl: Kubectl) -> tuple[str, ...]:
    """Every sign of an installed OpenXPU stack: policies, operator Deployments, driver
    DaemonSets (the operator's or demo/stack's), each named for a skip message."""
    found = [
        f"XPUClusterPolicy {p['metadata']['name']} "
        f"({(p.get('status') or {}).get('state') or 'no status'})"
        for p in _items(kubectl, "xpuclusterpolicies.openxpu.io")
    ]
    for kind, selector in (("deployments", OPERATOR_SELECTOR), ("daemonsets", DRIVER_SELECTOR)):
        for obj in _items(kubectl, kind, "-A", "-l", selector):
            meta = obj["metadata"]
            found.append(f"{obj['kind']} {meta['namespace']}/{meta['name']}")
    return tuple(found)


INSTALLS_ITS_OWN = "this test installs and removes its own and would destroy it"


def foreign_stack_reason(found: tuple[str, ...], why: str = INSTALLS_ITS_OWN) -> str | None:
    """Why a test must not run beside the stack found at the session's start, or None."""
    if not found:
        return None
    return (
        f"the lab already runs an OpenXPU stack ({'; '.join(found)}), e.g. `make demo`'s: "
        f"{why}. Remove it first (helm uninstall openxpu -n openxpu) to run this test"
    )


def require_no_foreign_stack(lab: LabCluster, why: str = INSTALLS_ITS_OWN) -> None:
    reason = foreign_stack_reason(lab.foreign_stack, why)
    if reason:
        pytest.skip(reason)


@dataclass(frozen=True)
class Release:
    """A Helm release of helm/openxpu whose policy is Ready."""

    name: str
    namespace: str
    policy: str


def ready_release(kubectl: Kubectl) -> Release | None:
    """A Helm release of the chart (found by its operator Deployment) with a Ready policy."""
    ready = {
        p["metadata"]["name"]: (p["metadata"].get("labels") or {})
        for p in _items(kubectl, "xpuclusterpolicies.openxpu.io")
        if (p.get("status") or {}).get("state") == "ready"
    }
    for deploy in _items(kubectl, "deployments", "-A", "-l", OPERATOR_SELECTOR):
        labels = deploy["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/managed-by") != "Helm":
            continue
        instance = labels.get("app.kubernetes.io/instance")
        for policy, policy_labels in ready.items():
            if policy_labels.get("app.kubernetes.io/instance") == instance:
                return Release(str(instance), deploy["metadata"]["namespace"], policy)
    return None


def install_release(lab: LabCluster, *args: str) -> Release:
    """`make demo`'s install: helm upgrade --install with the lab's values, then Ready."""
    lab.helm(
        "upgrade", "--install", "openxpu", str(CHART), "-n", STACK_NAMESPACE,
        "--create-namespace", "-f", str(LAB_VALUES), *args, "--wait", "--timeout=5m",
    )  # fmt: skip
    wait_ready(lab, "default")
    return Release("openxpu", STACK_NAMESPACE, "default")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 300) -> Any:
    """The first truthy value of `check`, polled each second."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_ready(lab: LabCluster, policy: str, timeout: int = 420) -> None:
    """The policy's Ready condition for its current generation (kubectl wait compares
    observedGeneration); on a timeout the policy's own explanation is in the message."""
    out = lab.kubectl(
        "wait", f"xcp/{policy}", "--for=condition=Ready", f"--timeout={timeout}s",
        check=False, timeout=timeout + 30,
    )  # fmt: skip
    if out.returncode != 0:
        described = lab.kubectl("describe", "xcp", policy, check=False).stdout
        raise AssertionError(f"policy {policy} not Ready: {out.stderr}\n{described}")


def uninstall_release(lab: LabCluster, release: Release) -> None:
    lab.helm("uninstall", release.name, "-n", release.namespace, "--wait", "--timeout=5m")
    # Helm never deletes the release's namespace; the operator's Lease is all it still holds.
    lab.kubectl("delete", "namespace", release.namespace, "--wait", timeout=300)


@pytest.fixture
def openxpu_release(lab_cluster: LabCluster) -> Iterator[Release]:
    """A Ready OpenXPU release: the lab's own (a running `make demo`), reused as it is and
    left alone, or else one installed here and uninstalled at the end."""
    lab = lab_cluster
    if lab.foreign_stack:
        found = ready_release(lab.kubectl)
        if found is None:
            pytest.skip(
                f"the lab's OpenXPU stack ({'; '.join(lab.foreign_stack)}) is not a Ready "
                "Helm release of helm/openxpu: nothing to reuse, and not ours to replace"
            )
        yield found
        return
    release = install_release(lab)
    try:
        yield release
    finally:
        uninstall_release(lab, release)


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
    foreign = installed_stack(cluster.kubectl)
    if foreign:
        print(f"\nlab holds an OpenXPU stack, left alone: {'; '.join(foreign)}", file=sys.stderr)
    cluster = dataclasses.replace(cluster, foreign_stack=foreign)
    yield cluster
    if started and not os.environ.get("OPENXPU_LAB_KEEP"):
        lab.down()
        left = lab.leftovers()
        assert not left, f"openxpu-lab down left things behind: {left}"
