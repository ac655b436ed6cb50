"""Test helpers: a PodResources server speaking the kubelet's contract, and metric parsing."""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent import futures
from pathlib import Path
from typing import NamedTuple

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from openxpu_exporter.podresourcesapi import api_pb2, api_pb2_grpc
from openxpu_runtime.client import wait_until_answering
from openxpu_runtime.testing import XpudProcess

RESOURCE = "openxpu.io/xpu"


def pod(
    name: str,
    namespace: str,
    containers: Mapping[str, list[str]],
    resource: str = RESOURCE,
) -> api_pb2.PodResources:
    """A pod whose containers hold the given device IDs of `resource`."""
    return api_pb2.PodResources(
        name=name,
        namespace=namespace,
        containers=[
            api_pb2.ContainerResources(
                name=cname,
                devices=[api_pb2.ContainerDevices(resource_name=resource, device_ids=ids)]
                if ids
                else [],
            )
            for cname, ids in containers.items()
        ],
    )


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    """The kubelet's PodResources service on a unix socket, serving `pods` as set by the test."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.pods: list[api_pb2.PodResources] = []
        self.calls = 0
        self._server: grpc.Server | None = None

    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: object
    ) -> api_pb2.ListPodResourcesResponse:
        self.calls += 1
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)

    def start(self) -> FakeKubelet:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self, server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


class SkewedXpud(XpudProcess):
    """A real xpud whose telemetry a newer release's would be while `skew` exists
    (skewed_xpud.py says how)."""

    SCRIPT = Path(__file__).with_name("skewed_xpud.py")

    def __init__(self, root: Path, *args: str) -> None:
        super().__init__(root, *args)
        self.skew = root / "skew"

    def start(self, timeout: float = 15.0) -> SkewedXpud:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OPENXPU_TEST_SKEW_FILE": str(self.skew)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(self.SCRIPT), *self.args, "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        wait_until_answering(self.socket, self.proc.poll, timeout)
        return self


class Series(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Series]:
    # prometheus-client's parser appends _total to every counter sample that lacks it;
    # Prometheus keeps the name as written, which for the DCGM counters has no _total.
    written = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, re.MULTILINE))
    return [
        Series(
            s.name if s.name in written else s.name.removesuffix("_total"), dict(s.labels), s.value
        )
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def select(series: list[Series], name: str, **labels: str) -> list[Series]:
    return [
        s for s in series if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def one(series: list[Series], name: str, **labels: str) -> Series:
    found = select(series, name, **labels)
    assert len(found) == 1, f"{name}{labels}: expected one series, got {found}"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ExporterProcess:
    """`openxpu-exporter` as a real child process on a loopback port."""

    def __init__(self, *args: str, env: Mapping[str, str] | None = None, log: Path) -> None:
        self.port = free_port()
        self.args = [
            sys.executable, "-m", "openxpu_exporter.cli",
            "--listen", f"127.0.0.1:{self.port}", "--log-level", "warning", *args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0, wait_ready: bool = True) -> ExporterProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exporter exited: {self.log.read_text()[-2000:]}")
            try:
                status = httpx.get(f"{self.url}/readyz", timeout=1.0).status_code
                if status == 200 or not wait_ready:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"exporter not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def metrics(self) -> list[Series]:
        r = httpx.get(f"{self.url}/metrics", timeout=5.0)
        r.raise_for_status()
        return parse(r.text)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def running_exporter(
    *args: str, log: Path, env: Mapping[str, str] | None = None, wait_ready: bool = True
) -> Iterator[ExporterProcess]:
    proc = ExporterProcess(*args, log=log, env=env).start(wait_ready=wait_ready)
    try:
        yield proc
    finally:
        proc.stop()


class Exchange(NamedTuple):
    accept: str
    content_type: str


@contextlib.contextmanager
def recording_proxy(upstream: str) -> Iterator[tuple[int, list[Exchange]]]:
    """An HTTP proxy in front of `upstream` on a loopback port: yields its port and the list
    of (Accept sent, Content-Type answered) it records for every request passing through."""
    exchanges: list[Exchange] = []

    class Forward(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            accept = self.headers.get("Accept", "")
            answer = httpx.get(upstream + self.path, headers={"accept": accept}, timeout=5.0)
            content_type = answer.headers.get("content-type", "")
            exchanges.append(Exchange(accept, content_type))
            self.send_response(answer.status_code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, format: str, *args: object) -> None:  # silence per-request lines
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], exchanges
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
