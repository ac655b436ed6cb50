"""Readiness probes against the lab's TLS endpoints, using the admin client certificate."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openxpu_lab import procs
from openxpu_lab.shell import LabError


def _ssl_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def get_json(url: str, ca: Path, cert: Path, key: Path, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, context=_ssl_context(ca, cert, key), timeout=timeout) as r:
        return json.loads(r.read())


def api_request(server: str, pki: Path, method: str, path: str, body: Any = None) -> int:
    """One request to the API server as the lab's admin; returns the HTTP status."""
    ctx = _ssl_context(pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
    req = urllib.request.Request(
        f"{server}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def http_ok(
    url: str, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> bool:
    try:
        ctx = _ssl_context(ca, cert, key) if ca and cert and key else None
        with urllib.request.urlopen(url, context=ctx, timeout=3) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError, ssl.SSLError):
        return False


def wait_for(
    what: str,
    probe: Callable[[], bool],
    *,
    timeout: float,
    component: str,
    pid_dir: Path,
    log_dir: Path,
    interval: float = 0.25,
) -> None:
    """Poll `probe`; fail early with the log tail if the component's process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        if procs.alive(component, pid_dir) is None:
            raise LabError(
                f"{component} exited while waiting for {what}. Last lines of its log "
                f"({log_dir / (component + '.log')}):\n{procs.log_tail(component, log_dir)}"
            )
        time.sleep(interval)
    raise LabError(
        f"{component}: {what} not reached within {timeout:.0f}s. Last lines of its log "
        f"({log_dir / (component + '.log')}):\n{procs.log_tail(component, log_dir)}"
    )
