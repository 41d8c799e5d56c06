"""Development sign-in: ``POST /dev/token`` {"user": "alice"} answers {"token": "..."}.

Anyone may sign in as anyone, so the route exists only where the ``dev_login`` setting is on
(by default only on the embedded server, which keeps everything in memory anyway). It lets the
browser client in gateway/web/ sign in without a token printed by ``imflow token``.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from imflow.core import tokens
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.models import USER_ID_PATTERN

MAX_BODY = 4096


def _error(error: ImflowError) -> JSONResponse:
    return JSONResponse({"error": error.to_dict()}, status_code=400)


async def _user(request: Request) -> str:
    data = await request.body()
    if len(data) > MAX_BODY:
        raise ImflowError(ErrorCode.BAD_FRAME, f"the body is limited to {MAX_BODY} bytes")
    try:
        body: Any = orjson.loads(data or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ImflowError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from exc
    user = body.get("user") if isinstance(body, dict) else None
    if not isinstance(user, str) or not USER_ID_PATTERN.match(user):
        raise ImflowError(ErrorCode.BAD_FRAME, "give {\"user\": ...}: 1-64 letters, digits, '_', '.' or '-'")
    return user


async def issue_token(request: Request) -> JSONResponse:
    try:
        user = await _user(request)
    except ImflowError as error:
        return _error(error)
    settings = request.app.state.backend.settings
    token = tokens.issue(settings.secret_key.get_secret_value(), user, settings.token_ttl_seconds)
    return JSONResponse({"token": token, "user": user}, headers={"Cache-Control": "no-store"})


def routes(settings: Any) -> list[BaseRoute]:
    """The route when development sign-in is on for these settings, else none (a 404)."""
    return [Route("/dev/token", issue_token, methods=["POST"])] if settings.dev_login_enabled else []
