"""The device plugin's v1 config, as the operator writes it from devicePlugin.config, is a
config the plugin's own parser takes: the policy never admits what the plugin would refuse
(a plugin that refuses its config crash-loops on every node)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from openxpu_device_plugin.config import Config
from openxpu_operator.policy import PluginConfig, PolicyError, load_policy
from openxpu_operator.render import RenderContext, render_operands

pytestmark = pytest.mark.unit


def _sharing(**time_slicing: Any) -> dict[str, Any]:
    return {"sharing": {"timeSlicing": {"replicas": 2, **time_slicing}}}


CONFIGS: list[dict[str, Any]] = [
    {},
    _sharing(),
    _sharing(renameByDefault=True, failRequestsGreaterThanOne=True),
    _sharing(allocationPolicy="packed"),
    *(
        _sharing(memoryPerReplica=m)
        for m in ("even", "none", "4Gi", "512Mi", "1", "3G", "0", "0Gi", "00Mi", "007Mi")
    ),
    {"flags": {"resourceName": "example.com/xpu"}},
    {"flags": {"resourceName": "k8s.io/xpu"}},
    {"flags": {"deviceListStrategy": ["cdi"], "deviceIDStrategy": "index"}},
    {"flags": {"deviceListStrategy": ["envvar", "device-specs", "cdi"]}},
    {"flags": {"xpudSocket": "/run/openxpu/other.sock", "cdiSpecDir": "/etc/cdi"}},
]


def _written_config(plugin: dict[str, Any]) -> dict[str, Any] | None:
    """The config file the operator renders for this devicePlugin.config, or None when the
    operator refuses the policy."""
    spec = {"devicePlugin": {"config": plugin}, "cdi": {"enabled": True}}
    try:
        policy = load_policy({"metadata": {"name": "p", "uid": "u"}, "spec": spec})
    except PolicyError:
        return None
    for operand in render_operands(policy, RenderContext(nodes=("n",))):
        for obj in operand.objects:
            if obj["metadata"]["name"] == "openxpu-device-plugin-config":
                written: dict[str, Any] = yaml.safe_load(obj["data"]["config.yaml"])
                return written
    raise AssertionError("no device plugin ConfigMap rendered")


@pytest.mark.parametrize(
    "plugin", CONFIGS, ids=lambda c: yaml.safe_dump(c, default_flow_style=True).strip()
)
def test_every_config_the_operator_writes_is_one_the_plugin_reads(plugin: dict[str, Any]) -> None:
    written = _written_config(plugin)
    if written is not None:
        Config.model_validate(written)  # the plugin's parser: raises on a refused config


def test_a_zero_memory_per_replica_is_refused_by_both() -> None:
    assert _written_config(_sharing(memoryPerReplica="0")) is None
    with pytest.raises(ValueError, match="positive quantity"):
        Config.model_validate({"version": "v1", **_sharing(memoryPerReplica="0")})


def _aliases(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """A model's fields as written in the file, each with its sub-model if it has one."""
    fields: dict[str, type[BaseModel] | None] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        sub = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
        fields[info.alias or name] = sub
    return fields


def _shape(model: type[BaseModel]) -> dict[str, Any]:
    return {k: _shape(sub) if sub else None for k, sub in _aliases(model).items()}


def test_the_policy_mirrors_every_field_of_the_plugin_file_but_health() -> None:
    """policy.PluginConfig is a hand-kept copy of the plugin's v1 file format (the operator
    may not import the plugin): the same sections and fields, so nothing the plugin reads is
    out of a policy's reach unnoticed. `health` (disableHealthChecks) is the one known gap:
    a policy cannot set it today. nvidiaCompat and driverRoot follow the policy's driver
    section (the operator writes them), so they are not the plugin section's to set."""
    plugin = _shape(Config)
    assert plugin.pop("health") is not None
    assert plugin["flags"].pop("nvidiaCompat", 0) is None
    assert plugin["flags"].pop("driverRoot", 0) is None
    assert _shape(PluginConfig) == plugin
