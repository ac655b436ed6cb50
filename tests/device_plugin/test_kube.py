from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path

import pytest

from openxpu_device_plugin.kube import KubeError, from_kubeconfig, load_credentials

pytestmark = pytest.mark.unit


def kubeconfig(tmp_path: Path, cluster: dict[str, object], user: dict[str, object]) -> Path:
    p = tmp_path / "kubeconfig"
    p.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://h:6443/", **cluster}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return p


def test_token_and_insecure(tmp_path: Path) -> None:
    creds = from_kubeconfig(
        kubeconfig(tmp_path, {"insecure-skip-tls-verify": True}, {"token": "abc"})
    )
    assert creds.server == "https://h:6443" and creds.token == "abc" and creds.ssl is False


def test_missing_context_and_bad_ca(tmp_path: Path) -> None:
    p = kubeconfig(tmp_path, {}, {})
    doc = json.loads(p.read_text())
    doc["current-context"] = "nope"
    p.write_text(json.dumps(doc))
    with pytest.raises(KubeError, match="no context named 'nope'"):
        from_kubeconfig(p)
    bad = base64.b64encode(b"not a certificate").decode()
    with pytest.raises(ssl.SSLError):
        from_kubeconfig(kubeconfig(tmp_path, {"certificate-authority-data": bad}, {}))


def test_no_kubeconfig_outside_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError, match="not in a cluster"):
        load_credentials(None)
