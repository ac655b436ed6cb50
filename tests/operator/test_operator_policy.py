"""Policy semantics the operator computes from a spec: which profile a node carries, which
driver DaemonSets exist, durations."""

from __future__ import annotations

import pytest

from openxpu_operator.policy import load_policy, parse_duration

pytestmark = pytest.mark.unit

POOLS = {
    "emulation": {
        "defaultProfile": "x1-2",
        "profiles": {"small": {"base": "x1-8", "devices": 4}},
        "nodePools": [
            {"name": "big", "nodeSelector": {"pool": "big"}, "profile": "x1-8"},
            {"name": "small", "nodeSelector": {"pool": "small", "zone": "a"}, "profile": "small"},
            {"name": "also-big", "nodeSelector": {"zone": "a"}, "profile": "x2-64"},
        ],
    }
}


def test_first_matching_pool_wins_else_the_default() -> None:
    spec = load_policy({"spec": POOLS}).spec
    assert spec.node_profile({"pool": "big", "zone": "a"}) == "x1-8"
    assert spec.node_profile({"pool": "small", "zone": "a"}) == "small"
    assert spec.node_profile({"pool": "small"}) == "x1-2"  # every selector label must match
    assert spec.node_profile({"zone": "a"}) == "x2-64"
    assert spec.node_profile({}) == "x1-2"
    assert spec.profiles_in_use() == ["x1-8", "small", "x2-64", "x1-2"]


def test_driver_profile_overrides_every_pool() -> None:
    spec = load_policy({"spec": {**POOLS, "driver": {"profile": "small"}}}).spec
    assert spec.node_profile({"pool": "big"}) == "small"
    assert spec.profiles_in_use() == ["small"]


def test_custom_profile_resolves_to_a_runtime_profile() -> None:
    spec = load_policy({"spec": POOLS}).spec
    profile = spec.emulation.profiles["small"].resolve("small")
    assert (profile.name, profile.count, profile.link_groups) == ("small", 4, 2)
    assert profile.product == "OpenXPU X1 64GB"


@pytest.mark.parametrize(
    ("text", "seconds"), [("0s", 0.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "5 s", "1d", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
