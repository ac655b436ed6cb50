"""xpud as a newer release might answer it: run as a script with xpud's own arguments.

While the file named by $OPENXPU_TEST_SKEW_FILE exists, /v1/telemetry carries a field this
client does not know and lacks one it requires (renamed, as a later API version might), so
the answer cannot be parsed whatever the client tolerates. Without the file it is xpud.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request, Response

from openxpu_runtime.daemon import main as xpud
from openxpu_runtime.daemon.app import ScopeSockets
from openxpu_runtime.engine import Engine

SKEW_FILE = "OPENXPU_TEST_SKEW_FILE"


AppFactory = Callable[[Engine, ScopeSockets | None], FastAPI]


def skewed(create_app: AppFactory) -> AppFactory:
    def create(engine: Engine, scope_sockets: ScopeSockets | None = None) -> FastAPI:
        app = create_app(engine, scope_sockets)
        skew = Path(os.environ[SKEW_FILE])

        @app.middleware("http")
        async def newer_telemetry(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            response = await call_next(request)
            # A stat of a local file: not worth a thread in a test double's middleware.
            if request.url.path != "/v1/telemetry" or not skew.exists():  # noqa: ASYNC240
                return response
            body = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]
            telemetry = json.loads(body)
            for device in telemetry["devices"]:
                device["memory_used"] = device.pop("memory_used_bytes")
                device["memory_bandwidth_ratio"] = 0.5
            return Response(
                json.dumps(telemetry), response.status_code, media_type="application/json"
            )

        return app

    return create


if __name__ == "__main__":
    xpud.create_app = skewed(xpud.create_app)  # type: ignore[assignment]
    sys.exit(xpud.main())
