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


LOOPBACK = {"127.0.0.1", "::1"}


async def issue_token(request: Request) -> JSONResponse:
    settings = request.app.state.backend.settings
    # on by default (the embedded server) it answers this machine only: `imflow serve --host
    # 0.0.0.0` must not let the network sign in as anyone; IMFLOW_DEV_LOGIN=true opens it up
    if settings.dev_login is None and (request.client is None or request.client.host not in LOOPBACK):
        return JSONResponse({"error": {"code": "forbidden", "message": "development sign-in answers this machine only"}},
                            status_code=403)
    length = request.headers.get("content-length") or "0"
    if not length.isdigit() or int(length) > MAX_BODY:
        return _error(ImflowError(ErrorCode.BAD_FRAME, f"the body is limited to {MAX_BODY} bytes"))
    try:
        user = await _user(request)
    except ImflowError as error:
        return _error(error)
    token = tokens.issue(settings.secret_key.get_secret_value(), user, settings.token_ttl_seconds)
    return JSONResponse({"token": token, "user": user}, headers={"Cache-Control": "no-store"})


def routes(settings: Any) -> list[BaseRoute]:
    """The route when development sign-in is on for these settings, else none (a 404)."""
    return [Route("/dev/token", issue_token, methods=["POST"])] if settings.dev_login_enabled else []
