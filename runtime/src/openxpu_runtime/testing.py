"""Run a real xpud process in a scratch root: the harness every component's tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from openxpu_runtime.client import XpudClient, wait_until_answering
from openxpu_runtime.errors import Unreachable
from openxpu_runtime.paths import HostPaths

XPUD = (sys.executable, "-m", "openxpu_runtime.daemon.main")


def run_xpud(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run xpud to completion (for the ways it refuses to start), capturing its output."""
    return subprocess.run([*XPUD, *args], capture_output=True, text=True, timeout=timeout)


class XpudProcess:
    """`xpud` as a child process under `root`; `start()` returns once its API answers."""

    def __init__(
        self, root: Path, *args: str, node: str = "node-a", command: Sequence[str] = XPUD
    ) -> None:
        self.paths = HostPaths(root)
        self.command = list(command)
        self.args = ["--root", str(root), "--node", node, "--device-nodes", "file", *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "xpud.log"

    @property
    def socket(self) -> Path:
        return self.paths.socket

    def client(self) -> XpudClient:
        return XpudClient(self.socket)

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it to answer."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.command, *self.args, "--log-level", "warning"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.proc

    def start(self, timeout: float = 15.0) -> XpudProcess:
        self.spawn()
        assert self.proc is not None
        try:
            wait_until_answering(self.socket, self.proc.poll, timeout)
        except BaseException as exc:
            self.stop()  # the caller gets no handle on a failed start: leave nothing running
            if isinstance(exc, Unreachable):
                raise RuntimeError(f"{exc}: {self.log_tail()}") from None
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> XpudProcess:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
