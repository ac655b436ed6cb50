"""Feature discovery's Kubernetes credentials against a real kube-apiserver (the lab's
envtest): a $KUBECONFIG list merged, inline (`*-data`) credentials, an exec credential
plugin, and the in-cluster service account with only the rights the DaemonSet grants."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.aio import client

from openxpu_device_plugin.kube import KubeClient, KubeError, NodeName, configure
from openxpu_runtime.testing import XpudProcess

pytestmark = [
    pytest.mark.integration,
    # The lab starts etcd/kube-apiserver detached and drops their Popen objects on purpose.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

NODE = NodeName("node-kube")
SA, NAMESPACE = "openxpu-feature-discovery", "default"
MANIFEST = Path(__file__).parents[2] / "demo/stack/21-feature-discovery.yaml"


@pytest.fixture
async def admin(apiserver: Any) -> AsyncIterator[client.ApiClient]:
    api = client.ApiClient(await configure(str(apiserver.kubeconfig)))
    core = client.CoreV1Api(api)
    try:
        await core.delete_node(NODE)
    except client.ApiException as exc:
        assert exc.status == 404
    await core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=NODE)))
    yield api
    await api.close()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def inline_kubeconfig_list(apiserver: Any, tmp_path: Path) -> str:
    """Two files as $KUBECONFIG lists them, credentials inline (`*-data`); kubectl's rule
    is that every file counts, and here the user lives in the second."""
    first, second = tmp_path / "clusters", tmp_path / "users"
    first.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {
                        "name": "envtest",
                        "cluster": {
                            "server": apiserver.url,
                            "certificate-authority-data": b64(apiserver.ca_cert),
                        },
                    }
                ],
                "contexts": [{"name": "fd", "context": {"cluster": "envtest", "user": "admin"}}],
                "current-context": "fd",
            }
        )
    )
    second.write_text(
        yaml.safe_dump(
            {
                "users": [
                    {
                        "name": "admin",
                        "user": {
                            "client-certificate-data": b64(apiserver.client_cert),
                            "client-key-data": b64(apiserver.client_key),
                        },
                    }
                ]
            }
        )
    )
    return f"{first}:{second}"


async def test_kubeconfig_list_is_merged_with_inline_credentials(
    admin: client.ApiClient, apiserver: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", inline_kubeconfig_list(apiserver, tmp_path))
    kube = await KubeClient.connect()
    try:
        after = await kube.patch_node_labels(NODE, {"openxpu.io/xpu.count": "8"})
        assert after["openxpu.io/xpu.count"] == "8"
        assert (await kube.node_labels(NODE))["openxpu.io/xpu.count"] == "8"
    finally:
        await kube.aclose()


async def service_account_token(admin: client.ApiClient, name: str = SA) -> str:
    """A bound token of a service account with the DaemonSet's own ClusterRole."""
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    docs = {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}
    binding = docs["ClusterRoleBinding"]
    for make, body in (
        (
            lambda body: core.create_namespaced_service_account(NAMESPACE, body),
            {"metadata": {"name": name}},
        ),
        (rbac.create_cluster_role, docs["ClusterRole"]),
        (
            rbac.create_cluster_role_binding,
            {
                **binding,
                "metadata": {"name": f"{binding['metadata']['name']}-{name}"},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
            },
        ),
    ):
        try:
            await make(body)
        except client.ApiException as exc:
            assert exc.status == 409  # made by an earlier test
    req = await core.create_namespaced_service_account_token(
        name, NAMESPACE, client.AuthenticationV1TokenRequest(spec={"audiences": []})
    )
    assert req.status is not None
    return req.status.token


async def test_exec_credential_plugin(
    admin: client.ApiClient, apiserver: Any, tmp_path: Path
) -> None:
    token = await service_account_token(admin)
    plugin = tmp_path / "credential-plugin"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token},
    }
    plugin.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(credential)}\nEOF\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": apiserver.url,
                            "certificate-authority": str(apiserver.ca_cert),
                        },
                    }
                ],
                "users": [
                    {
                        "name": "u",
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1",
                                "command": str(plugin),
                                "interactiveMode": "Never",
                            }
                        },
                    }
                ],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    kube = await KubeClient.connect(str(kubeconfig))
    try:
        await kube.patch_node_labels(NODE, {"openxpu.io/xpu.family": "x1"})
        assert (await kube.node_labels(NODE))["openxpu.io/xpu.family"] == "x1"
    finally:
        await kube.aclose()


async def test_in_cluster_service_account_has_only_node_rights(
    admin: client.ApiClient, apiserver: Any, tmp_path: Path
) -> None:
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(await service_account_token(admin))
    (sa_dir / "ca.crt").write_bytes(apiserver.ca_cert.read_bytes())
    host, port = apiserver.url.removeprefix("https://").rsplit(":", 1)
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    kube = KubeClient(await configure(None, sa_dir=sa_dir, environ=env))
    try:
        await kube.patch_node_labels(NODE, {"openxpu.io/xpu.product": "X1"})
        assert (await kube.node_labels(NODE))["openxpu.io/xpu.product"] == "X1"
        with pytest.raises(KubeError, match="get node other: 404"):
            await kube.node_labels(NodeName("other"))
    finally:
        await kube.aclose()


async def test_in_cluster_token_is_read_again_when_the_kubelet_rotates_it(
    admin: client.ApiClient, apiserver: Any, tmp_path: Path
) -> None:
    """The old client read the token once; a bound token is replaced on disk well before it
    expires, and the old one may stop working. The client re-reads the file every minute."""
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "ca.crt").write_bytes(apiserver.ca_cert.read_bytes())
    token = sa_dir / "token"
    token.write_text(await service_account_token(admin, "rotating-old"))
    host, port = apiserver.url.removeprefix("https://").rsplit(":", 1)
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    kube = KubeClient(await configure(None, sa_dir=sa_dir, environ=env))
    try:
        await kube.node_labels(NODE)
        # Rotation: a new token on disk, the old one no longer valid.
        token.write_text(await service_account_token(admin, "rotating-new"))
        await client.CoreV1Api(admin).delete_namespaced_service_account("rotating-old", NAMESPACE)
        rotated_at = time.monotonic()
        # Still the token it read (the client keeps it a minute), now refused once the API
        # server's own authentication cache lets go of it.
        for _ in range(40):
            try:
                await kube.node_labels(NODE)
            except KubeError as exc:
                assert "401" in str(exc)
                break
            await asyncio.sleep(0.5)
        else:
            pytest.fail("the deleted service account's token was never refused")
        await asyncio.sleep(max(0.0, 61 - (time.monotonic() - rotated_at)))
        await kube.node_labels(NODE)
    finally:
        await kube.aclose()


async def test_decoded_keys_are_gone_when_discovery_exits(
    admin: client.ApiClient, apiserver: Any, xpud: XpudProcess, tmp_path: Path
) -> None:
    """Inline credentials become files for the TLS layer; none may outlive the process."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "KUBECONFIG": inline_kubeconfig_list(apiserver, tmp_path),
        "NODE_NAME": NODE,
    }
    code = "import sys; from openxpu_device_plugin import cli; sys.exit(cli.discovery_main())"
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code, "--oneshot", "--xpud-socket", str(xpud.socket)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    kube = KubeClient(await configure(str(apiserver.kubeconfig)))
    try:
        assert (await kube.node_labels(NODE))["openxpu.io/xpu.count"] == "8"
    finally:
        await kube.aclose()
    assert list(scratch.iterdir()) == []


async def test_no_credentials_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeError, match="not in a cluster"):
        await configure(None, environ={})
    with pytest.raises(KubeError, match="cannot load Kubernetes credentials"):
        await configure(str(tmp_path / "missing"), environ={})
