"""The gateway's ASGI app: the browser client at /, the client WebSocket at /ws, health at /healthz,
readiness at /readyz, the HTTP API at /api and the admin API at /admin."""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from imflow.core.plugin_types import GatewayContext

from . import admin_api, dev_login, http_api, server_logs
from .extensions import Extensions
from .hub import Hub
from .session import serve_session

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis
    from starlette.requests import Request
    from starlette.types import Receive, Scope, Send

    from imflow.core.models import SendCommand
    from imflow.core.plugin_calls import Hooks
    from imflow.core.services import Services
    from imflow.core.settings import Settings
    from imflow.core.storage.archive import ArchiveReader


class Backend(Protocol):
    """What the gateway needs from the process it runs in (see imflow/node.py)."""

    settings: Settings
    node_name: str
    redis: Redis
    archive: ArchiveReader
    hooks: Hooks
    services: Services  # what the core services get from this process (once started)

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def produce(self, topic: str, key: bytes, value: bytes) -> None:
        """Put a record on an agent's topic (short name); returns once it is durable."""
        ...

    async def submit(self, command: SendCommand) -> asyncio.Future:
        """Queue a send for the ingest agent in call order; the future resolves once it is durable."""
        ...

    async def readiness(self) -> dict[str, bool]:
        """Each dependency's name and whether it answers now."""
        ...

    async def broadcast(self, topic: str, key: bytes, value: bytes) -> None:
        """Put a record on a broadcast stream (short name), which every gateway reads whole."""
        ...

    async def subscribe_broadcast(self, topic: str, handle: Callable[[list[bytes]], Awaitable[None]]) -> None:
        """Feed this gateway every record put on a broadcast stream from now on."""
        ...


WEB = Path(__file__).with_name("web")  # the browser client: static files, no build step


class WebFiles(StaticFiles):
    """The client's files, revalidated on every load (ETag) so a new version shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


async def home(request: Request) -> Response:
    return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "alive"})


async def readyz(request: Request) -> JSONResponse:
    checks = await request.app.state.backend.readiness()
    checks["gateway_channel"] = request.app.state.hub.listening
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)


async def client_socket(websocket: WebSocket) -> None:
    state = websocket.app.state
    await serve_session(websocket, state.backend, state.hub, state.extensions)


async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process (dropped and sampled frames, loop lag, breaker state)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _start_broadcast_streams(backend: Backend, hub: Hub, extensions: Extensions) -> None:
    """Give plugins this gateway's context, and feed each broadcast stream's records to its handler."""
    context = GatewayContext(backend.node_name, backend.settings, backend.redis, backend.hooks, hub.load, backend.broadcast)
    extensions.gateway = context
    for stream in extensions.broadcast_streams:
        await backend.subscribe_broadcast(stream.topic, partial(stream.handle, context))


class Gateway(Starlette):
    """The gateway's Starlette app, whose client WebSocket skips the middleware stack: each of its
    layers would be one more coroutine frame held by every idle connection (about 3 kB in all,
    a tenth of one), and none of them acts on a WebSocket (errors of a session are its own)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"].removeprefix(scope.get("root_path", "")) == "/ws":
            scope["app"] = self
            await client_socket(WebSocket(scope, receive, send))
            return
        await super().__call__(scope, receive, send)


def create_gateway(backend: Backend) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server_logs.install()
        await backend.start()
        s = backend.settings
        app.state.hub = Hub(
            backend.redis, backend.node_name,
            heartbeat_seconds=s.gateway_heartbeat_seconds, liveness_ttl_seconds=s.gateway_liveness_ttl_seconds,
        )
        try:
            await app.state.hub.start()
            await _start_broadcast_streams(backend, app.state.hub, extensions)
            yield
        finally:
            await app.state.hub.stop()
            await backend.stop()

    extensions = Extensions.from_hooks(backend.hooks)
    routes = [  # and the client WebSocket at /ws, ahead of them all (Gateway)
        Route("/", home), Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
        Mount("/static", WebFiles(directory=WEB), name="static"),
        *http_api.ROUTES, *admin_api.ROUTES, *dev_login.routes(backend.settings), *extensions.routes,
    ]
    app = Gateway(routes=routes, lifespan=lifespan)
    app.state.backend = backend
    app.state.extensions = extensions
    return app
