"""A real xpud whose API differs the ways another version's would, for the client's tests.

    python skewed_xpud.py MODE XPUD-ARGUMENTS...

newer:  every JSON object it answers gains a field, and the event stream opens with an
        event of a type this client has never heard of
older:  no /v1/events at all
broken: answers lack the required `health` field
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openxpu_runtime.daemon import main as xpud
from openxpu_runtime.daemon.app import ScopeSockets, create_app
from openxpu_runtime.engine import Engine

FUTURE_EVENT = {
    "seq": 0,
    "time": 0.0,
    "type": "migration",
    "device_index": 0,
    "device_uuid": "XPU-future",
    "health": "Healthy",
    "progress": 0.5,
}


def with_future_fields(value: Any) -> Any:
    if isinstance(value, dict):
        rewritten = {k: with_future_fields(v) for k, v in value.items()}
        # Objects gain a field; maps keyed by number (errors_total) are data, not schema.
        if any(not k.isdigit() for k in value):
            rewritten["added_later"] = {"x": [1]}
        return rewritten
    if isinstance(value, list):
        return [with_future_fields(v) for v in value]
    return value


def without_health(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_health(v) for k, v in value.items() if k != "health"}
    if isinstance(value, list):
        return [without_health(v) for v in value]
    return value


class RewriteJson:
    """Rewrites every JSON body and every NDJSON line the app sends."""

    def __init__(self, app: ASGIApp, rewrite: Callable[[Any], Any], first_line: bytes) -> None:
        self.app, self.rewrite, self.first_line = app, rewrite, first_line

    def _lines(self, chunk: bytes) -> bytes:
        return b"".join(
            json.dumps(self.rewrite(json.loads(line))).encode() + b"\n" if line.strip() else b"\n"
            for line in chunk.splitlines()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        body = bytearray()

        async def rewritten(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                kind = dict(start["headers"]).get(b"content-type", b"")
                start["kind"] = kind.split(b";")[0]
                if start["kind"] == b"application/x-ndjson":
                    await send({k: v for k, v in start.items() if k != "kind"})
                    await send(
                        {"type": "http.response.body", "body": self.first_line, "more_body": True}
                    )
                return
            if start["kind"] == b"application/x-ndjson":
                await send({**message, "body": self._lines(message.get("body", b""))})
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            out = bytes(body)
            if start["kind"] == b"application/json" and out:
                out = json.dumps(self.rewrite(json.loads(out))).encode()
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            headers.append((b"content-length", str(len(out)).encode()))
            await send(
                {"type": "http.response.start", "status": start["status"], "headers": headers}
            )
            await send({"type": "http.response.body", "body": out})

        await self.app(scope, receive, rewritten)


def skewed(mode: str) -> Callable[[Engine, ScopeSockets | None], FastAPI]:
    def create(engine: Engine, scope_sockets: ScopeSockets | None = None) -> FastAPI:
        app = create_app(engine, scope_sockets)
        if mode == "newer":
            first = json.dumps(FUTURE_EVENT).encode() + b"\n"
            app.add_middleware(RewriteJson, rewrite=with_future_fields, first_line=first)
        elif mode == "broken":
            app.add_middleware(RewriteJson, rewrite=without_health, first_line=b"")
        elif mode == "older":
            app.router.routes = [
                r for r in app.router.routes if getattr(r, "path", None) != "/v1/events"
            ]
        else:
            raise SystemExit(f"skewed_xpud: unknown mode {mode!r}")
        return app

    return create


if __name__ == "__main__":
    xpud.create_app = skewed(sys.argv[1])  # type: ignore[attr-defined]
    sys.exit(xpud.main(sys.argv[2:]))
