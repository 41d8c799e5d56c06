"""The gateway's ASGI app: health and readiness now, the client protocol on top of them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class Backend(Protocol):
    """What the gateway needs from the process it runs in."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def readiness(self) -> dict[str, bool]:
        """Each dependency's name and whether it answers now."""
        ...


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "alive"})


async def readyz(request: Request) -> JSONResponse:
    checks = await request.app.state.backend.readiness()
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)


def create_gateway(backend: Backend) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()

    app = Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz)], lifespan=lifespan)
    app.state.backend = backend
    return app
