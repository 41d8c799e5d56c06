"""The gateway's ASGI app: the client WebSocket at /ws, health at /healthz, readiness at /readyz."""

from __future__ import annotations

import asyncio
import contextlib
import html
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from . import http_api
from .extensions import Extensions
from .hub import Hub
from .session import serve_session

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from imflow.core.archive import ArchiveReader
    from imflow.core.models import SendCommand
    from imflow.core.plugin_calls import Hooks
    from imflow.core.settings import Settings


class Backend(Protocol):
    """What the gateway needs from the process it runs in (see imflow/node.py)."""

    settings: Settings
    node_name: str
    redis: Redis
    archive: ArchiveReader
    hooks: Hooks

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


HOME = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>imflow</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#1d2430}
code{background:#eef1f5;padding:.1rem .3rem;border-radius:4px}h1{font-size:1.6rem}</style></head>
<body><h1>imflow is running</h1>
<p>Gateway <code>$node</code>. Clients connect to the WebSocket at <code>/ws</code>
(first frame: <code>{"op": "auth", "token": "..."}</code>; <code>imflow token alice</code> prints a development token).</p>
<ul><li><a href="/healthz">/healthz</a>: the process is alive</li>
<li><a href="/readyz">/readyz</a>: its Redis and transport answer</li></ul>
<p>The protocol, every frame and error code: <code>docs/protocol.md</code>. A Python client: <code>imflow.client</code>.</p>
</body></html>"""


async def home(request: Request) -> HTMLResponse:
    return HTMLResponse(HOME.replace("$node", html.escape(request.app.state.backend.node_name)))


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


def create_gateway(backend: Backend) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await backend.start()
        app.state.hub = Hub(backend.redis, backend.node_name)
        try:
            await app.state.hub.start()
            yield
        finally:
            await app.state.hub.stop()
            await backend.stop()

    extensions = Extensions.from_hooks(backend.hooks)
    routes = [
        Route("/", home), Route("/healthz", healthz), Route("/readyz", readyz), WebSocketRoute("/ws", client_socket),
        *http_api.ROUTES, *extensions.routes,
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.backend = backend
    app.state.extensions = extensions
    return app
