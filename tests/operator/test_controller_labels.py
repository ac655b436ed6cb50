"""Label math: which nodes are XPU nodes and the label patch each one gets (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from openxpu_operator.nodes import (
    PRESENT_LABEL,
    admin_disabled,
    desired_labels,
    is_xpu_node,
    removal,
)
from openxpu_operator.policy import XPUClusterPolicySpec
from openxpu_operator.render import OPERANDS, PROFILE_LABEL, deploy_label

pytestmark = pytest.mark.unit

ALL = [o.name for o in OPERANDS]
POOLS: dict[str, Any] = {
    "nodeSelector": {"xpu": "yes"},
    "emulation": {
        "nodePools": [{"name": "big", "nodeSelector": {"pool": "big"}, "profile": "x1-8"}]
    },
}


def spec(data: dict[str, Any] | None = None) -> XPUClusterPolicySpec:
    return XPUClusterPolicySpec.model_validate(data or {})


def test_an_empty_node_selector_selects_every_node() -> None:
    assert is_xpu_node(spec(), {})


@pytest.mark.parametrize(
    ("labels", "xpu"),
    [
        ({"xpu": "yes"}, True),  # the policy's nodeSelector
        ({"pool": "big"}, True),  # an emulation pool
        ({"openxpu.io/xpu.count": "4"}, True),  # devices feature discovery found
        ({"openxpu.io/xpu.count": "0"}, False),
        ({"xpu": "no"}, False),
        ({}, False),
    ],
)
def test_xpu_nodes_from_selector_pools_and_discovered_devices(
    labels: dict[str, str], xpu: bool
) -> None:
    assert is_xpu_node(spec(POOLS), labels) is xpu


def test_a_new_xpu_node_gets_present_profile_and_a_deploy_label_per_enabled_operand() -> None:
    patch = desired_labels(spec(POOLS), ALL, {"pool": "big"})
    assert patch == {
        PRESENT_LABEL: "true",
        PROFILE_LABEL: "x1-8",
        **{deploy_label(name): "true" for name in ALL},
    }


def test_a_labelled_node_needs_no_patch() -> None:
    labels = {
        "pool": "big",
        **{k: v for k, v in desired_labels(spec(POOLS), ALL, {"pool": "big"}).items() if v},
    }
    assert desired_labels(spec(POOLS), ALL, labels) == {}


def test_an_admins_false_is_never_overwritten_nor_removed() -> None:
    labels = {"xpu": "yes", deploy_label("exporter"): "false"}
    patch = desired_labels(spec(POOLS), ALL, labels)
    assert deploy_label("exporter") not in patch
    assert admin_disabled(labels) == {"exporter"}
    # Not when the operand is disabled in the policy, not on uninstall either.
    assert deploy_label("exporter") not in desired_labels(spec(POOLS), [], labels)
    assert deploy_label("exporter") not in removal(labels)


def test_a_disabled_operands_deploy_label_is_removed() -> None:
    labels = {"xpu": "yes", deploy_label("exporter"): "true", deploy_label("driver"): "true"}
    patch = desired_labels(spec(POOLS), ["driver"], labels)
    assert patch[deploy_label("exporter")] is None
    assert deploy_label("driver") not in patch


def test_a_node_that_is_no_longer_an_xpu_node_loses_our_labels() -> None:
    labels = {
        "xpu": "no",
        PRESENT_LABEL: "true",
        PROFILE_LABEL: "x1-2",
        deploy_label("cdi"): "true",
    }
    assert desired_labels(spec(POOLS), ALL, labels) == dict.fromkeys(
        [PRESENT_LABEL, PROFILE_LABEL, deploy_label("cdi")]
    )


def test_the_profile_follows_the_pool_and_the_driver_override() -> None:
    assert desired_labels(spec(POOLS), [], {"xpu": "yes"})[PROFILE_LABEL] == "x1-2"
    override = {**POOLS, "driver": {"profile": "x2-64"}}
    assert desired_labels(spec(override), [], {"pool": "big"})[PROFILE_LABEL] == "x2-64"


def test_removal_takes_every_stack_label_and_nothing_else() -> None:
    labels = {
        "pool": "big",
        "openxpu.io/pool": "mine",
        PRESENT_LABEL: "true",
        PROFILE_LABEL: "x1-8",
        "openxpu.io/xpu.count": "8",  # feature discovery's
        "openxpu.io/xpu.product": "XPU-1",
        "openxpu.io/driver.version": "0.1.0",  # feature discovery's too
        deploy_label("driver"): "true",
        deploy_label("exporter"): "false",
    }
    assert removal(labels) == dict.fromkeys(
        [
            "openxpu.io/driver.version",
            PROFILE_LABEL,
            "openxpu.io/xpu.count",
            deploy_label("driver"),
            PRESENT_LABEL,
            "openxpu.io/xpu.product",
        ]
    )


def test_feature_discovery_labels_stay_while_the_stack_runs() -> None:
    labels = {"xpu": "yes", "openxpu.io/xpu.count": "8", "openxpu.io/xpu.product": "XPU-1"}
    patch = desired_labels(spec(POOLS), ALL, labels)
    assert "openxpu.io/xpu.count" not in patch and "openxpu.io/xpu.product" not in patch
