"""Host paths of the design brief, all relative to one root so tests run in a temp dir."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SOCKET_ENV = "XPUD_SOCKET"
DEFAULT_SOCKET = Path("/run/openxpu/xpud.sock")


@dataclass(frozen=True)
class HostPaths:
    root: Path

    @property
    def run_dir(self) -> Path:
        return self.root / "run/openxpu"

    @property
    def socket(self) -> Path:
        return self.run_dir / "xpud.sock"

    @property
    def scopes_dir(self) -> Path:
        """One directory per allocation, holding its own socket."""
        return self.run_dir / "scopes"

    @property
    def state_dir(self) -> Path:
        return self.root / "var/lib/openxpu"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def device_dir(self) -> Path:
        return self.root / "dev"

    @property
    def driver_dir(self) -> Path:
        return self.root / "opt/openxpu/driver"


def probe_socket(path: Path | str, timeout: float | None = None) -> None:
    """Connect to a unix socket and hang up; OSError if nothing accepts there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        probe.connect(str(path))


def default_socket(env: Mapping[str, str] = os.environ) -> Path:
    """Where clients find xpud: $XPUD_SOCKET (in a container, the socket of its allocation's
    scope), else the host default (the admin socket)."""
    return Path(env.get(SOCKET_ENV) or DEFAULT_SOCKET)
