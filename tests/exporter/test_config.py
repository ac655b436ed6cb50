"""Settings: defaults < YAML file < OPENXPU_EXPORTER_* environment < flags, and errors that
name the bad setting and where its value came from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from openxpu_exporter.config import Config, ConfigError, load

pytestmark = pytest.mark.unit


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("dcgm_compat: true\nport: 9500\nrefresh_interval: 2\nhostname: from-file\n")
    monkeypatch.setenv("OPENXPU_EXPORTER_LISTEN", "127.0.0.1:9600")
    monkeypatch.setenv("OPENXPU_EXPORTER_DISABLED_METRICS", "a, b")
    config = load(file, {"refresh_interval": 0, "hostname": None})
    assert config.dcgm_compat is True
    assert (config.host, config.port) == ("127.0.0.1", 9600)
    assert config.refresh_interval == 0
    assert config.hostname == "from-file"
    assert config.disabled_metrics == frozenset({"a", "b"})


def test_service_links_of_a_service_named_openxpu_exporter_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the kubelet injects into every pod of a namespace with this Service.
    monkeypatch.setenv("OPENXPU_EXPORTER_PORT", "tcp://10.96.82.11:9400")
    monkeypatch.setenv("OPENXPU_EXPORTER_SERVICE_HOST", "10.96.82.11")
    monkeypatch.setenv("OPENXPU_EXPORTER_SERVICE_PORT", "9400")
    assert load().port == 9400
    monkeypatch.setenv("OPENXPU_EXPORTER_LISTEN", "nonsense")
    with pytest.raises(ConfigError, match="listen: expected HOST:PORT"):
        load()


def test_defaults_match_dcgm_exporter_habits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "node-7")
    config = Config()
    assert (config.port, config.hostname, config.native, config.dcgm_compat) == (
        9400, "node-7", True, False
    )  # fmt: skip
    assert config.kubelet_socket == Path("/var/lib/kubelet/pod-resources/kubelet.sock")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"port": "0"}, "port: must be 1..65535, got 0 (from flag --listen)"),
        ({"port": "x"}, "port: Input should be a valid integer"),
        (
            {"refresh_interval": "-1"},
            "refresh_interval: must be 0..3600 s, got -1.0 (from flag --refresh-interval)",
        ),
        ({"dcgm_compat": "maybe"}, "dcgm_compat: Input should be a valid boolean"),
        ({"native": "false"}, "at least one of native and dcgm_compat must be on"),
    ],
)
def test_bad_values_are_named(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(None, settings)


def test_bad_values_say_where_they_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plugin's rule, from the one mechanism both use: name the setting and its source."""
    file = tmp_path / "c.yaml"
    file.write_text("attribution_interval: 0\n")
    with pytest.raises(ConfigError) as err:
        load(file)
    assert str(err.value) == (
        "invalid configuration: attribution_interval: must be 0.1..3600 s, got 0.0 "
        f"(from config file {file})"
    )
    monkeypatch.setenv("OPENXPU_EXPORTER_REFRESH_INTERVAL", "soon")
    with pytest.raises(ConfigError, match=r"\(from env OPENXPU_EXPORTER_REFRESH_INTERVAL\)"):
        load(file, {"attribution_interval": 5})
    monkeypatch.setenv("OPENXPU_EXPORTER_LISTEN", ":70000")
    monkeypatch.delenv("OPENXPU_EXPORTER_REFRESH_INTERVAL")
    with pytest.raises(ConfigError, match=r"port: .* \(from env OPENXPU_EXPORTER_LISTEN\)"):
        load()


def test_unknown_settings_in_the_file_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("dcgm_compat: true\nrefresh_intreval: 2\n")
    with pytest.raises(ConfigError, match="refresh_intreval: unknown setting"):
        load(file)


def test_bad_file(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(file)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")
