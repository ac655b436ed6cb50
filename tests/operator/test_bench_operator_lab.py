"""Benchmark on the lab (images cached): a policy applied -> status Ready/Reconciled, and
where the time goes.

The operator runs as its ServiceAccount with its default resync (60 s), so what is measured
is what a user gets. Printed: the total, then per operand pod the seconds (from the
policy's creation) at which it was created, scheduled, each init container ran, its main
container started and it turned Ready (or its Job finished), from the timestamps the API
server keeps (one-second resolution). Goal (issue 8): < 20 s. Figures only.
Run it only under the lab lock: `flock /tmp/openxpu-lab.lock uv run pytest -m bench <this>`.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import COLD_START_TIMEOUT, LabCluster, lab_cluster  # noqa: F401 (fixture)
from test_controller_e2e import NAMESPACE, _policy, _ready, create_policy, operator_on, wait_for

pytestmark = [pytest.mark.bench, pytest.mark.e2e, pytest.mark.timeout(COLD_START_TIMEOUT)]

RESYNC_SECONDS = 60.0


def _at(stamp: str | None, origin: datetime.datetime) -> str:
    if not stamp:
        return "-"
    when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return f"{(when - origin).total_seconds():.0f}"


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


def _timeline(pod: dict[str, Any], origin: datetime.datetime) -> dict[str, str]:
    status = pod.get("status") or {}
    row = {
        "pod": pod["metadata"]["labels"].get("app.kubernetes.io/component", "?"),
        "created": _at(pod["metadata"]["creationTimestamp"], origin),
        "scheduled": _at(_condition(pod, "PodScheduled").get("lastTransitionTime"), origin),
    }
    for c in status.get("initContainerStatuses") or []:
        done = (c.get("state") or {}).get("terminated") or {}
        row[c["name"]] = (
            f"{_at(done.get('startedAt'), origin)}-{_at(done.get('finishedAt'), origin)}"
        )
    main = (status.get("containerStatuses") or [{}])[0].get("state") or {}
    started = (main.get("running") or main.get("terminated") or {}).get("startedAt")
    row["started"] = _at(started, origin)
    if "terminated" in main:
        row["finished"] = _at(main["terminated"].get("finishedAt"), origin)
    else:
        row["ready"] = _at(_condition(pod, "Ready").get("lastTransitionTime"), origin)
    return row


def test_policy_to_ready_on_the_lab(lab_cluster: LabCluster, tmp_path: Path) -> None:  # noqa: F811
    with operator_on(lab_cluster, tmp_path, RESYNC_SECONDS) as lab:
        started = time.monotonic()
        create_policy(lab)
        wait_for("Ready/Reconciled", lambda: _ready(lab).get("reason") == "Reconciled", 600)
        total = time.monotonic() - started
        policy = _policy(lab)
        origin = datetime.datetime.fromisoformat(
            policy["metadata"]["creationTimestamp"].replace("Z", "+00:00")
        )
        pods = lab.kubectl_json(
            "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/managed-by=openxpu-operator"
        )["items"]
        rows = sorted(
            (_timeline(p, origin) for p in pods),  # type: ignore[union-attr,arg-type]
            key=lambda r: int(r["created"]) if r["created"] != "-" else 0,
        )
        ready_at = _at(_ready(lab).get("lastTransitionTime"), origin)
    print(f"\npolicy applied -> Ready/Reconciled: {total:.1f} s (condition at {ready_at} s)")
    for row in rows:
        print("  " + ", ".join(f"{k} {v}" for k, v in row.items()))
    print(json.dumps({"policy_to_ready_s": round(total, 1), "pods": rows}))
