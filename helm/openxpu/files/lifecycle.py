#!/usr/bin/env python3
"""The openxpu chart's Helm hooks, run in the OpenXPU image with the Python standard library.

  apply-crds FILE...            pre-upgrade: server-side apply each CRD (Helm never upgrades
                                crds/), then wait until the API server serves it
  delete-policies               pre-delete: delete every XPUClusterPolicy and wait until the
                                operator's finalizer has cleaned up and released it
  delete-crds NAME...           post-delete (crds.deleteOnUninstall): delete the CRDs; after
                                Helm has deleted the release, which names their kind

A CRD file is named after the CRD it holds (<plural>.<group>.yaml). In a pod the API server,
token and CA come from the service account; --server/--token-file/--ca-file override them.
Exit codes: 0 done, 1 the API server refused or a wait timed out (the message says which).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
POLICIES = "/apis/openxpu.io/v1/xpuclusterpolicies"
FIELD_MANAGER = "openxpu-chart"


class ApiError(Exception):
    pass


class Api:
    def __init__(self, server: str, token: str, ca_file: str) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.context = ssl.create_default_context(cafile=ca_file)

    def call(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(self.server + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                data = json.loads(payload)
            except ValueError:
                data = {"message": payload.decode(errors="replace")}
            return exc.code, data

    def expect(self, method: str, path: str, ok: tuple[int, ...], **kw: Any) -> dict[str, Any]:
        status, data = self.call(method, path, **kw)
        if status not in ok:
            raise ApiError(f"{method} {path}: {status} {data.get('message', '')}".strip())
        return data


def _wait(what: str, done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = done()
        if state is True:
            return
        if time.monotonic() > deadline:
            raise ApiError(f"timed out after {timeout:.0f}s waiting for {what}: {state}")
        time.sleep(1)


def apply_crds(api: Api, files: list[str], timeout: float) -> None:
    for file in files:
        name = Path(file).name.removesuffix(".yaml")
        body = Path(file).read_bytes()
        api.expect(
            "PATCH",
            f"{CRDS}/{name}?fieldManager={FIELD_MANAGER}&force=true",
            ok=(200, 201),
            body=body,
            content_type="application/apply-patch+yaml",
        )

        def established(name: str = name) -> bool | str:
            crd = api.expect("GET", f"{CRDS}/{name}", ok=(200,))
            conditions = {c["type"]: c for c in crd.get("status", {}).get("conditions", [])}
            if conditions.get("Established", {}).get("status") == "True":
                return True
            return "not Established yet"

        _wait(f"CRD {name}", established, timeout)
        print(f"applied CRD {name}")


def delete_policies(api: Api, timeout: float) -> None:
    status, listing = api.call("GET", POLICIES)
    if status == 404:
        print("no XPUClusterPolicy CRD: nothing to delete")
        names: list[str] = []
    elif status != 200:
        raise ApiError(f"GET {POLICIES}: {status} {listing.get('message', '')}")
    else:
        names = [item["metadata"]["name"] for item in listing.get("items", [])]
    for name in names:
        api.expect("DELETE", f"{POLICIES}/{name}", ok=(200, 202, 404))
        print(f"deleting XPUClusterPolicy {name}")

    def gone() -> bool | str:
        status, listing = api.call("GET", POLICIES)
        if status == 404:
            return True
        left = [
            f"{meta['name']} (finalizers: {', '.join(meta.get('finalizers', []))})"
            for meta in (item["metadata"] for item in listing.get("items", []))
        ]
        return True if not left else "still there: " + "; ".join(left)

    if names:
        _wait("the operator's cleanup of the deleted policies", gone, timeout)
        print("every XPUClusterPolicy is gone: the operator has cleaned up")


def delete_crds(api: Api, names: list[str]) -> None:
    for name in names:
        api.expect("DELETE", f"{CRDS}/{name}", ok=(200, 202, 404))
        print(f"deleted CRD {name}")


def _api(args: argparse.Namespace) -> Api:
    server = args.server
    if not server:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ApiError("not in a pod (no KUBERNETES_SERVICE_HOST) and no --server")
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    token = Path(args.token_file).read_text().strip()
    return Api(server, token, args.ca_file)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lifecycle.py", description=__doc__.split("\n")[0])
    p.add_argument("--server", default="", help="API server URL (default: in-cluster)")
    p.add_argument("--token-file", default=str(SERVICE_ACCOUNT / "token"))
    p.add_argument("--ca-file", default=str(SERVICE_ACCOUNT / "ca.crt"))
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    sub = p.add_subparsers(dest="command", required=True)
    apply = sub.add_parser("apply-crds", help="server-side apply CRD files")
    apply.add_argument("files", nargs="+")
    sub.add_parser("delete-policies", help="delete every policy, wait for cleanup")
    delete = sub.add_parser("delete-crds", help="delete CRDs by name")
    delete.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    try:
        api = _api(args)
        if args.command == "apply-crds":
            apply_crds(api, args.files, args.timeout)
        elif args.command == "delete-policies":
            delete_policies(api, args.timeout)
        else:
            delete_crds(api, args.names)
    except (ApiError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
