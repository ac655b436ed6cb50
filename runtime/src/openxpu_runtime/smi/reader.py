"""Read-only calls to xpud on the standard library alone.

A plain `xpu-smi` is asked for in scripts and loops; importing httpx and pydantic would cost
it ten times what xpud takes to answer, so the readings travel as plain JSON here.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from openxpu_runtime.errors import BY_CODE, Unreachable, XpuError

# The socket is local: anything slower than this is a hung daemon, not a slow network.
TIMEOUT_SECONDS = 10.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("xpud", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class XpudReader:
    """GET requests over one kept-alive connection, answered as decoded JSON."""

    def __init__(self, socket_path: Path, timeout: float = TIMEOUT_SECONDS) -> None:
        self.socket = socket_path
        self._conn = _UnixConnection(socket_path, timeout)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> XpudReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str) -> Any:
        try:
            self._conn.request("GET", path)
            response = self._conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise Unreachable(
                f"cannot reach xpud at {self.socket} ({exc}); "
                "is the XPU driver installed and xpud running?"
            ) from None
        try:
            data = json.loads(body)
        except ValueError:
            raise XpuError(f"xpud answered {response.status}: {body[:200]!r}") from None
        if response.status >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict):
                raise BY_CODE.get(error.get("code", ""), XpuError)(str(error.get("message", "")))
            raise XpuError(f"xpud answered {response.status}: {data}")
        return data
