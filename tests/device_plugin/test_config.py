from __future__ import annotations

from pathlib import Path

import pytest

from openxpu_device_plugin.config import (
    AllocationPolicy,
    ConfigError,
    ConfigSource,
    DeviceIDStrategy,
    DeviceListStrategy,
)

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return p


def test_defaults_without_a_file() -> None:
    c = ConfigSource(env={}).load()
    assert c.flags.resource_name == "openxpu.io/xpu"
    assert c.flags.device_list_strategy == (
        DeviceListStrategy.ENVVAR,
        DeviceListStrategy.DEVICE_SPECS,
    )
    assert c.flags.device_id_strategy is DeviceIDStrategy.UUID
    assert c.replicas == 1 and not c.shared
    assert c.advertised_resource == "openxpu.io/xpu"
    assert c.memory_limit_per_replica(1 << 30) is None


def test_file_then_env_then_flag(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "version: v1\nflags:\n  deviceIDStrategy: index\n  deviceListStrategy: [cdi]\n"
        "sharing:\n  timeSlicing:\n    replicas: 2\n    allocationPolicy: packed\n",
    )
    c = ConfigSource(file=f, env={}).load()
    assert c.flags.device_id_strategy is DeviceIDStrategy.INDEX
    assert c.flags.device_list_strategy == (DeviceListStrategy.CDI,)
    assert c.replicas == 2
    assert c.sharing.time_slicing.allocation_policy is AllocationPolicy.PACKED
    env = {"REPLICAS": "3", "DEVICE_LIST_STRATEGY": "envvar,device-specs"}
    c = ConfigSource(file=f, env=env).load()
    assert c.replicas == 3
    assert c.flags.device_list_strategy == (
        DeviceListStrategy.ENVVAR,
        DeviceListStrategy.DEVICE_SPECS,
    )
    c = ConfigSource(file=f, env=env, flags={"replicas": "5", "device_id_strategy": None}).load()
    assert c.replicas == 5  # flag beats env
    assert c.flags.device_id_strategy is DeviceIDStrategy.INDEX  # unset flag: file stands


def test_shared_resource_and_memory_per_replica(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        "version: v1\nsharing:\n  timeSlicing:\n    replicas: 4\n    renameByDefault: true\n"
        "    memoryPerReplica: 1Gi\n",
    )
    c = ConfigSource(file=f, env={}).load()
    assert c.advertised_resource == "openxpu.io/xpu.shared"
    assert c.memory_limit_per_replica(16 << 30) == 1 << 30
    assert c.memory_limit_per_replica(512 << 20) == 512 << 20  # never above the device
    even = ConfigSource(env={"REPLICAS": "4"}).load()
    assert even.memory_limit_per_replica(16 << 30) == 4 << 30


@pytest.mark.parametrize(
    ("text", "env", "flags", "expected"),
    [
        ("version: v2\n", {}, {}, "version: unsupported version 'v2'"),
        ("flags: {}\n", {}, {}, "version: required"),
        ("- a\n- b\n", {}, {}, "must be a mapping"),
        ("version: v1\nflags: [\n", {}, {}, "not valid YAML"),
        (
            "version: v1\nflags:\n  deviceListStrategy: [gpu]\n",
            {},
            {},
            "flags.deviceListStrategy.0: Input should be 'envvar', 'device-specs' or 'cdi'",
        ),
        ("version: v1\nflags:\n  resourceName: xpu\n", {}, {}, "flags.resourceName: 'xpu' is not"),
        ("version: v1\nsharing:\n  timeSlicing:\n    replica: 2\n", {}, {}, "replica: Extra"),
        (
            "version: v1\nsharing:\n  timeSlicing:\n    memoryPerReplica: lots\n",
            {},
            {},
            "sharing.timeSlicing.memoryPerReplica: must be",
        ),
        (
            "version: v1\n",
            {"REPLICAS": "0"},
            {},
            "sharing.timeSlicing.replicas: Input should be greater than or equal to 1 "
            "(from env REPLICAS)",
        ),
        (
            "version: v1\n",
            {},
            {"device_id_strategy": "serial"},
            "flags.deviceIDStrategy: Input should be 'uuid' or 'index' "
            "(from flag --device-id-strategy)",
        ),
    ],
)
def test_bad_config_names_the_field(
    tmp_path: Path, text: str, env: dict[str, str], flags: dict[str, str | None], expected: str
) -> None:
    f = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        ConfigSource(file=f, env=env, flags=flags).load()
    assert expected in str(err.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        ConfigSource(file=tmp_path / "nope.yaml", env={}).load()
