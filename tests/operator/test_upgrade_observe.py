"""From raw API objects to the machine's NodeViews (pure): revisions, driver pods, what runs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from openxpu_operator.upgrade.executor import REVISION_LABEL, observe, runs

pytestmark = pytest.mark.unit

TEMPLATE: dict[str, Any] = {
    "metadata": {
        "labels": {"app.kubernetes.io/name": "openxpu-driver", "team": "a"},
        "annotations": {"openxpu.io/driver-version": "0.1.0", "note": "x"},
    },
    "spec": {
        "nodeSelector": {"openxpu.io/xpu.deploy.driver": "true"},
        "containers": [{"name": "driver", "image": "openxpu/openxpu:dev", "args": ["--x"]}],
    },
}
DS = {
    "metadata": {"name": "openxpu-driver", "uid": "ds-1"},
    "spec": {"template": TEMPLATE},
}
OWNER = {"kind": "DaemonSet", "uid": "ds-1", "controller": True}


def revision(number: int, hash_: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {REVISION_LABEL: hash_}, "ownerReferences": [OWNER]},
        "revision": number,
    }


def driver_pod(hash_: str, template: dict[str, Any] = TEMPLATE, **meta: Any) -> dict[str, Any]:
    pod = copy.deepcopy(template)
    pod["metadata"] |= {
        "namespace": "openxpu",
        "name": f"driver-{hash_}",
        "ownerReferences": [OWNER],
        **meta,
    }
    pod["metadata"]["labels"][REVISION_LABEL] = hash_
    pod["spec"]["nodeName"] = "a"
    return pod


NODE = {"metadata": {"name": "a", "labels": {"openxpu.io/xpu.deploy.driver": "true"}}}


def test_the_desired_revision_is_the_newest_controller_revision() -> None:
    (view,) = observe([NODE], [DS], [revision(3, "c"), revision(1, "a")], [driver_pod("a")])
    assert view.desired_revision == "c"
    assert view.driver_pod is not None and view.driver_pod.revision == "a"


def test_a_new_revision_that_changes_only_labels_or_annotations_keeps_the_pod_current() -> None:
    (view,) = observe([NODE], [DS], [revision(2, "new")], [driver_pod("old")])
    assert view.driver_current


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t["spec"]["containers"][0].update(image="openxpu/openxpu:0.2"),
        lambda t: t["spec"]["containers"][0].update(args=["--y"]),
        lambda t: t["metadata"]["annotations"].update({"openxpu.io/driver-version": "0.2.0"}),
    ],
)
def test_a_change_to_what_the_driver_runs_makes_the_pod_out_of_date(change: Any) -> None:
    new = copy.deepcopy(TEMPLATE)
    change(new)
    assert runs(new) != runs(TEMPLATE)
    ds = {**DS, "spec": {"template": new}}
    (view,) = observe([NODE], [ds], [revision(2, "new")], [driver_pod("old")])
    assert not view.driver_current


def test_labels_and_other_annotations_are_not_what_runs() -> None:
    other = copy.deepcopy(TEMPLATE)
    other["metadata"]["labels"]["team"] = "b"
    other["metadata"]["annotations"]["note"] = "y"
    assert runs(other) == runs(TEMPLATE)


def test_the_live_driver_pod_wins_over_a_terminating_one_and_other_pods_are_listed() -> None:
    leaving = driver_pod("old", deletionTimestamp="2026-01-01T00:00:00Z")
    work = {
        "metadata": {"namespace": "t", "name": "burn"},
        "spec": {
            "nodeName": "a",
            "containers": [{"name": "c", "resources": {"limits": {"openxpu.io/xpu": "1"}}}],
        },
    }
    (view,) = observe([NODE], [DS], [revision(2, "new")], [leaving, driver_pod("new"), work])
    assert view.driver_pod is not None and view.driver_pod.name == "driver-new"
    assert [(p.name, p.uses_xpu, p.controller_kind) for p in view.pods] == [
        ("driver-old", False, "DaemonSet"),
        ("burn", True, None),
    ]


def test_a_node_without_a_driver_pod_takes_its_daemonset_from_the_node_selector() -> None:
    (view,) = observe([NODE], [DS], [revision(2, "new")], [])
    assert view.driver_pod is None and view.desired_revision == "new"
    assert not view.driver_current
    (elsewhere,) = observe([{"metadata": {"name": "b"}}], [DS], [revision(2, "new")], [])
    assert elsewhere.desired_revision is None and elsewhere.driver_current


def test_a_driver_pods_last_exit_and_the_last_line_of_its_log_tail() -> None:
    pod = driver_pod("a")
    tail = "xpu-driver: 0.3.0-faulty installed; running xpud in the foreground\nxpud: failed\n"
    crashed = {"exitCode": 3, "reason": "Error", "message": tail}
    pod["status"] = {
        "containerStatuses": [
            {
                "name": "driver",
                "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": crashed},
            }
        ]
    }
    (view,) = observe([NODE], [DS], [revision(1, "a")], [pod])
    assert view.driver_pod is not None
    assert (view.driver_pod.last_exit, view.driver_pod.last_words) == (3, "xpud: failed")
    # Down right now: the current state's exit is the latest.
    status = pod["status"]["containerStatuses"][0]
    status["state"] = {"terminated": {"exitCode": 2, "message": "xpud: lock held"}}
    (view,) = observe([NODE], [DS], [revision(1, "a")], [pod])
    assert view.driver_pod is not None
    assert (view.driver_pod.last_exit, view.driver_pod.last_words) == (2, "xpud: lock held")
    (view,) = observe([NODE], [DS], [revision(1, "a")], [driver_pod("a")])
    assert view.driver_pod is not None
    assert (view.driver_pod.last_exit, view.driver_pod.last_words) == (None, "")
