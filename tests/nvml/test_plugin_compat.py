"""What the device plugin mounts into an XPU container for NVIDIA's tools: the driver's
libnvidia-ml.so.1 and nvidia-smi at the toolkit's paths, only when the driver installed them
and the plugin's `flags.nvidiaCompat` is on (the lab's e2e test proves the pod side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from openxpu_device_plugin import cdi, compat
from openxpu_device_plugin.config import ConfigError, ConfigSource, Flags
from openxpu_operator.policy import load_policy
from openxpu_operator.render import RenderContext, render_operands

pytestmark = pytest.mark.unit


def driver_root(tmp_path: Path, *, library: bool = True) -> Path:
    root = tmp_path / "opt/openxpu/driver/current"
    (root / "lib").mkdir(parents=True)
    (root / "bin").mkdir()
    if library:
        (root / "lib/libnvidia-ml.so.1").write_bytes(b"\x7fELF")
    return root


def flags(**env: str) -> Flags:
    return ConfigSource(env=env).load().flags


def test_the_library_and_nvidia_smi_go_where_nvidias_toolkit_puts_them(tmp_path: Path) -> None:
    root = driver_root(tmp_path)
    assert compat.mounts(flags(OPENXPU_DEVICE_PLUGIN_DRIVER_ROOT=str(root))) == [
        (str(root), str(root)),
        ("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", f"{root}/lib/libnvidia-ml.so.1"),
        ("/usr/bin/nvidia-smi", f"{root}/bin/nvidia-smi"),
    ]


def test_nothing_is_mounted_when_off_or_when_the_driver_installed_nothing(
    tmp_path: Path,
) -> None:
    root = str(driver_root(tmp_path))
    assert (
        compat.mounts(
            flags(
                OPENXPU_DEVICE_PLUGIN_DRIVER_ROOT=root, OPENXPU_DEVICE_PLUGIN_NVIDIA_COMPAT="false"
            )
        )
        == []
    )
    bare = driver_root(tmp_path / "bare", library=False)  # xpu-driver --no-nvidia-compat
    assert compat.mounts(flags(OPENXPU_DEVICE_PLUGIN_DRIVER_ROOT=str(bare))) == []


def test_the_v1_config_file_turns_it_off(tmp_path: Path) -> None:
    root = driver_root(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"version": "v1", "flags": {"nvidiaCompat": False, "driverRoot": str(root)}})
    )
    assert compat.mounts(ConfigSource(file=config, env={}).load().flags) == []
    config.write_text(yaml.safe_dump({"version": "v1", "flags": {"driverRoot": "relative"}}))
    with pytest.raises(ConfigError, match="driverRoot"):
        ConfigSource(file=config, env={}).load()


def _rendered(spec: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The driver container's command and the plugin's v1 config, as the operator renders."""
    policy = load_policy({"metadata": {"name": "cluster-policy", "uid": "u-1"}, "spec": spec})
    rendered = render_operands(policy, RenderContext(nodes=("n",)))
    objects = [obj for o in rendered for obj in o.objects]
    (driver,) = [o for o in objects if o["metadata"]["name"].startswith("openxpu-driver-")]
    (config,) = [o for o in objects if o["metadata"]["name"] == "openxpu-device-plugin-config"]
    command = driver["spec"]["template"]["spec"]["containers"][0]["command"]
    return command, yaml.safe_load(config["data"]["config.yaml"])


def test_the_policy_turns_it_off_for_the_driver_and_the_plugin() -> None:
    command, config = _rendered({})
    assert "--no-nvidia-compat" not in command
    assert "nvidiaCompat" not in config["flags"]  # the plugin's default: on
    command, config = _rendered({"driver": {"nvidiaCompat": False}})
    assert command[-1] == "--no-nvidia-compat"
    # The plugin stops at once; a driver keeps its files until it is next installed.
    assert config["flags"]["nvidiaCompat"] is False


def test_the_cdi_spec_carries_them_for_every_device(tmp_path: Path) -> None:
    """As NVIDIA's CDI spec carries its driver's files: a runtime injecting any
    `openxpu.io/xpu=...` name mounts them, Kubernetes or not."""
    root = driver_root(tmp_path)
    spec = compat.add_to_cdi(
        cdi.build_spec([], "/run/openxpu/xpud.sock"),
        flags(OPENXPU_DEVICE_PLUGIN_DRIVER_ROOT=str(root)),
    )
    mounts = spec["containerEdits"]["mounts"]
    assert [(m["containerPath"], m["hostPath"]) for m in mounts[-3:]] == compat.mounts(
        flags(OPENXPU_DEVICE_PLUGIN_DRIVER_ROOT=str(root))
    )
    assert all(m["options"] == ["ro", "nosuid", "nodev", "bind"] for m in mounts[-3:])
    off = compat.add_to_cdi(
        cdi.build_spec([], "/run/openxpu/xpud.sock"),
        flags(OPENXPU_DEVICE_PLUGIN_DRIVER_ROOT=str(root), OPENXPU_DEVICE_PLUGIN_NVIDIA_COMPAT="0"),
    )
    assert off == cdi.build_spec([], "/run/openxpu/xpud.sock")
