"""Each scope's own socket, `<scopes dir>/<id>/xpud.sock`, served by xpud's one server.

The device plugin mounts only `<scopes dir>/<id>` into the container (at /run/openxpu), so
the socket there is the one endpoint the container has: possession of the mount is the
capability. The directory outlives xpud restarts (a container's bind mount holds it), and
each start of xpud binds the socket in it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import os
import socket
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from openxpu_runtime.daemon.app import ScopeBound

SOCKET_NAME = "xpud.sock"
# The parent may be traversed but not listed: a local user who cannot list it cannot learn
# another scope's id, which is random, and so cannot reach its socket.
SCOPES_DIR_MODE = 0o711
SCOPE_DIR_MODE = 0o755
# Any uid in the container: workloads run as whatever user their image chose.
SCOPE_SOCKET_MODE = 0o666


def bind_unix(path: Path, mode: int) -> socket.socket:
    """A unix socket bound at `path` with `mode`: bound 0600 and widened after, so it is
    never more open than asked, not even briefly."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
    except BaseException:
        sock.close()
        raise
    return sock


class ScopeListeners:
    """The scope sockets. Bound before serving (the scopes saved across a restart) or on
    `POST /v1/scopes`; served on the admin server's loop, sharing its connections, so one
    graceful shutdown ends them all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sockets: dict[str, socket.socket] = {}
        self._servers: dict[str, asyncio.Server] = {}
        self._configs: dict[str, uvicorn.Config] = {}
        self._server: uvicorn.Server | None = None
        self._app: ASGIApp | None = None

    def path(self, scope_id: str) -> Path:
        return self.directory / scope_id / SOCKET_NAME

    def bind(self, scope_id: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, SCOPES_DIR_MODE)
        path = self.path(scope_id)
        # Kept if it exists: a running container may have it mounted.
        path.parent.mkdir(exist_ok=True)
        os.chmod(path.parent, SCOPE_DIR_MODE)
        path.unlink(missing_ok=True)  # left by an xpud that stopped: nothing serves it
        self._sockets[scope_id] = bind_unix(path, SCOPE_SOCKET_MODE)

    async def attach(self, server: uvicorn.Server, app: ASGIApp) -> None:
        """Serve every bound socket with `app` (the workload app) on `server`, started."""
        self._server, self._app = server, app
        for scope_id in list(self._sockets):
            await self._serve(scope_id)

    async def _serve(self, scope_id: str) -> None:
        assert self._server is not None and self._app is not None
        main = self._server
        # uvicorn serves one app per config; a shallow copy changes only the app.
        config = copy.copy(main.config)
        config.loaded_app = ScopeBound(self._app, scope_id)
        # uvicorn's own startup builds its protocols this way; the class is typed only as
        # asyncio.Protocol there too.
        protocol = functools.partial(
            config.http_protocol_class,  # type: ignore[call-arg]
            config=config,
            server_state=main.server_state,
            app_state=main.lifespan.state,
        )
        loop = asyncio.get_running_loop()
        self._servers[scope_id] = await loop.create_server(
            protocol, sock=self._sockets[scope_id], backlog=config.backlog
        )
        self._configs[scope_id] = config

    async def open(self, scope_id: str) -> None:
        self.bind(scope_id)
        try:
            if self._server is not None:
                await self._serve(scope_id)
        except BaseException:
            await self.close(scope_id)
            raise

    def _stop_serving(self, scope_id: str) -> None:
        server = self._servers.pop(scope_id, None)
        if server is not None:
            server.close()  # closes the listening socket too
        sock = self._sockets.pop(scope_id, None)
        if sock is not None and server is None:
            sock.close()

    async def close(self, scope_id: str) -> None:
        """The scope is deleted: its socket, its directory and its open connections go."""
        self._stop_serving(scope_id)
        config = self._configs.pop(scope_id, None)
        if self._server is not None and config is not None:
            for connection in list(self._server.server_state.connections):
                if getattr(connection, "config", None) is config:
                    connection.shutdown()
        path = self.path(scope_id)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # gone already, or someone put a file in it
            path.parent.rmdir()

    def stop(self) -> None:
        """xpud stops: no socket answers, but the directories stay for the next xpud."""
        for scope_id in list(self._sockets):
            self._stop_serving(scope_id)
            self.path(scope_id).unlink(missing_ok=True)
