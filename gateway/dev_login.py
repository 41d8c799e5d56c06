"""Development sign-in: ``POST /dev/token`` {"user": "alice"} answers {"token": "..."}.

Anyone may sign in as anyone, so the route exists only where the ``dev_login`` setting is on
(by default only on the embedded server, which keeps everything in memory anyway). It lets the
browser client in gateway/web/ sign in without a token printed by ``imflow token``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from imflow.core import tokens
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.models import USER_ID_PATTERN

from .http_api import error_response, json_body

MAX_BODY = 4096
LOOPBACK = {"127.0.0.1", "::1"}


def _user(body: dict[str, Any]) -> str:
    user = body.get("user")
    if not isinstance(user, str) or not USER_ID_PATTERN.fullmatch(user):
        raise ImflowError(ErrorCode.BAD_FRAME, "give {\"user\": ...}: 1-64 letters, digits, '_', '.' or '-'")
    return user


async def issue_token(request: Request) -> JSONResponse:
    settings = request.app.state.backend.settings
    # on by default (the embedded server) it answers this machine only: `imflow serve --host
    # 0.0.0.0` must not let the network sign in as anyone; IMFLOW_DEV_LOGIN=true opens it up
    try:
        if settings.dev_login is None and (request.client is None or request.client.host not in LOOPBACK):
            raise ImflowError(ErrorCode.FORBIDDEN, "development sign-in answers this machine only")
        user = _user(await json_body(request, MAX_BODY))
    except ImflowError as error:
        return error_response(error)
    token = tokens.issue(settings.secret_key.get_secret_value(), user, settings.token_ttl_seconds)
    return JSONResponse({"token": token, "user": user}, headers={"Cache-Control": "no-store"})


def routes(settings: Any) -> list[BaseRoute]:
    """The route when development sign-in is on for these settings, else none (a 404)."""
    return [Route("/dev/token", issue_token, methods=["POST"])] if settings.dev_login_enabled else []
