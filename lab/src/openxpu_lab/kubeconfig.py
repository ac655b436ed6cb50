"""Kubeconfig files (written as JSON, which every YAML reader accepts)."""

from __future__ import annotations

import json
from pathlib import Path

from openxpu_lab.paths import write_if_changed
from openxpu_lab.pki import CertPair


def write_kubeconfig(
    path: Path,
    server: str,
    ca_cert: Path,
    client: CertPair,
    user: str,
    cluster: str = "openxpu-lab",
) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server, "certificate-authority": str(ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(client.cert),
                    "client-key": str(client.key),
                },
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }
    write_if_changed(path, json.dumps(doc, indent=2) + "\n", mode=0o600)
    return path
