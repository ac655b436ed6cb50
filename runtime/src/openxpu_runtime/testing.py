"""Run a real xpud process in a scratch root: the harness every component's tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from openxpu_runtime.client import XpudClient, wait_until_answering
from openxpu_runtime.errors import Unreachable
from openxpu_runtime.paths import HostPaths


class XpudProcess:
    """`xpud` as a child process under `root`; `start()` returns once its API answers."""

    def __init__(self, root: Path, *args: str, node: str = "node-a") -> None:
        self.paths = HostPaths(root)
        self.args = ["--root", str(root), "--node", node, "--device-nodes", "file", *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "xpud.log"

    @property
    def socket(self) -> Path:
        return self.paths.socket

    def client(self) -> XpudClient:
        return XpudClient(self.socket)

    def start(self, timeout: float = 15.0) -> XpudProcess:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "openxpu_runtime.daemon.main",
                    *self.args,
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_answering(self.socket, self.proc.poll, timeout)
        except Unreachable as exc:
            raise RuntimeError(f"{exc}: {self.log_tail()}") from None
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
