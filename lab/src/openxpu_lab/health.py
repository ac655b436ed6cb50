"""Readiness probes of the lab's components' health endpoints (etcd with its client
certificate); calls to the API server itself go through the Kubernetes client (kube.py)."""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from openxpu_lab import procs
from openxpu_lab.shell import LabError


def _ssl_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


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
