"""When a pass may skip an apply (pure): the live object holds every rendered field, in the
API's spelling, and the hash of the rendered object."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from openxpu_operator.manager import RENDERED_HASH, difference, with_hash

pytestmark = pytest.mark.unit

RENDERED: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "j", "namespace": "openxpu", "annotations": {}},
    "spec": {
        "template": {
            "spec": {
                "tolerations": [],
                "containers": [
                    {"name": "w", "image": "i:1", "resources": {"limits": {"openxpu.io/xpu": 1}}}
                ],
            }
        }
    },
}


def _live(rendered: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns for an applied object: defaults added, empty fields
    dropped, quantities as strings."""
    live = copy.deepcopy(rendered)
    live["metadata"]["uid"] = "u"
    pod = live["spec"]["template"]["spec"]
    del pod["tolerations"]
    pod["restartPolicy"] = "Never"
    container = pod["containers"][0]
    container["resources"]["limits"]["openxpu.io/xpu"] = "1"
    container["terminationMessagePath"] = "/dev/termination-log"
    return live


def test_an_applied_object_needs_no_apply() -> None:
    want = with_hash(RENDERED)
    assert difference(_live(want), want) is None


def test_a_changed_value_names_its_field() -> None:
    want = with_hash(RENDERED)
    live = _live(want)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "hand-made"
    assert difference(live, want) == ".spec.template.spec.containers[0].image"


def test_a_field_dropped_from_the_render_is_seen_through_the_hash() -> None:
    before = copy.deepcopy(RENDERED)
    before["spec"]["template"]["spec"]["containers"][0]["args"] = ["--old"]
    live = _live(with_hash(before))
    want = with_hash(RENDERED)  # every field of `want` is in `live`, but not its hash
    assert difference(live, want) == f".metadata.annotations.{RENDERED_HASH}"
