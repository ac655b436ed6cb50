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
from openxpu_device_plugin.config import parse_quantity as config_parse_quantity

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
        (
            "version: v1\nsharing:\n  timeSlicing:\n    replica: 2\n",
            {},
            {},
            "sharing.timeSlicing.replica: unknown setting",
        ),
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


def test_prefixed_env_names_beat_the_older_ones() -> None:
    env = {"OPENXPU_DEVICE_PLUGIN_REPLICAS": "6", "REPLICAS": "2"}
    assert ConfigSource(env=env).load().replicas == 6
    with pytest.raises(ConfigError, match=r"\(from env OPENXPU_DEVICE_PLUGIN_REPLICAS\)"):
        ConfigSource(env={"OPENXPU_DEVICE_PLUGIN_REPLICAS": "0"}).load()


@pytest.mark.parametrize(
    ("quantity", "bytes_"),
    [
        ("1.5Gi", 3 << 29),
        ("2G", 2 * 10**9),
        ("512e6", 512 * 10**6),
        ("0.5Ki", 512),
        ("1P", 10**15),
        ("2E", 2 * 10**18),
        ("1000m", 1),  # a milli-quantity of bytes, as Kubernetes allows
        ("4294967296", 1 << 32),
    ],
)
def test_memory_per_replica_takes_kubernetes_quantities(
    tmp_path: Path, quantity: str, bytes_: int
) -> None:
    f = write(
        tmp_path, f"version: v1\nsharing:\n  timeSlicing:\n    memoryPerReplica: {quantity}\n"
    )
    c = ConfigSource(file=f, env={"REPLICAS": "2"}).load()
    assert config_parse_quantity(quantity) == bytes_
    assert c.memory_limit_per_replica(1 << 62) == bytes_


@pytest.mark.parametrize("quantity", ["lots", "-1Gi", "0", "1iB"])
def test_memory_per_replica_refuses_what_kubernetes_refuses(tmp_path: Path, quantity: str) -> None:
    f = write(
        tmp_path, f"version: v1\nsharing:\n  timeSlicing:\n    memoryPerReplica: {quantity}\n"
    )
    with pytest.raises(ConfigError, match=r"sharing\.timeSlicing\.memoryPerReplica: must be"):
        ConfigSource(file=f, env={}).load()


def test_health_check_knobs(tmp_path: Path) -> None:
    assert ConfigSource(env={}).load().health.ignored_fault_codes == frozenset()
    off = ConfigSource(env={"DP_DISABLE_HEALTHCHECKS": "all"}).load().health
    assert off.all_disabled and off.ignored_fault_codes == frozenset()
    some = ConfigSource(env={"OPENXPU_DEVICE_PLUGIN_DISABLE_HEALTHCHECKS": "48, 94"}).load()
    assert not some.health.all_disabled
    assert some.health.ignored_fault_codes == {48, 94}
    f = write(tmp_path, "version: v1\nhealth:\n  disableHealthChecks: [79]\n")
    assert ConfigSource(file=f, env={}).load().health.ignored_fault_codes == {79}
    flag = ConfigSource(file=f, env={}, flags={"disable_healthchecks": "all"}).load()
    assert flag.health.all_disabled
    with pytest.raises(ConfigError) as err:
        ConfigSource(env={"DP_DISABLE_HEALTHCHECKS": "xids"}).load()
    assert str(err.value) == (
        'invalid configuration: health.disableHealthChecks: must be "all" or fault codes '
        "such as 48,94, not 'xids' (from env DP_DISABLE_HEALTHCHECKS)"
    )
