"""The operator (a real process, its RBAC, a real kube-apiserver) follows its operands by
watching them: a DaemonSet that turns ready or a validation Job that completes is in the
policy's status within seconds, with the periodic resync far away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import needs_etcd
from operator_process import NAMESPACE, Env, environment, running, wait_until

from openxpu_operator.kube import now

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), needs_etcd]

DS = f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets"
JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
# Far beyond every wait below: a change seen in time was seen through the watches.
RESYNC_SECONDS = 600
SEEN_WITHIN = 30


def _write_status_and_see(env: Env, path: str, status: dict[str, Any], condition: str) -> None:
    """Write what a controller would (none runs here) through the status subresource; the
    policy's condition must turn True soon after."""
    r = env.http.patch(
        f"{path}/status",
        json={"status": status},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    wait_until(
        f"{condition}=True after {path} changed",
        lambda: env.condition("watched", condition).get("status") == "True",
        SEEN_WITHIN,
    )


def test_operand_changes_reach_the_status_without_waiting_for_the_resync(
    tmp_path: Path,
) -> None:
    with environment() as env, running(env.kubeconfig, tmp_path, resync_seconds=RESYNC_SECONDS):
        env.create_node("w-1", {"kubernetes.io/hostname": "w-1"})
        env.create_policy("watched", {})
        wait_until(
            "DriverReady=False",
            lambda: env.condition("watched", "DriverReady").get("reason") == "RollingOut",
        )
        driver = next(d for d in env.items(DS) if "driver" in d["metadata"]["name"])
        name = driver["metadata"]["name"]
        # What the DaemonSet controller writes once the pod on the one node is ready.
        status = {
            "observedGeneration": driver["metadata"]["generation"],
            "currentNumberScheduled": 1,
            "desiredNumberScheduled": 1,
            "numberMisscheduled": 0,
            "numberReady": 1,
            "updatedNumberScheduled": 1,
        }
        _write_status_and_see(env, f"{DS}/{name}", status, "DriverReady")

        job = env.items(JOBS)[0]
        stamp = now()
        # What the Job controller writes once its pod succeeded.
        status = {
            "startTime": stamp,
            "completionTime": stamp,
            "conditions": [
                {"type": kind, "status": "True", "lastTransitionTime": stamp}
                for kind in ("SuccessCriteriaMet", "Complete")
            ],
            "succeeded": 1,
        }
        _write_status_and_see(
            env, f"{JOBS}/{job['metadata']['name']}", status, "WorkloadValidationReady"
        )
