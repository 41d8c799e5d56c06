"""Development sign-in: ``POST /dev/token`` {"user": "alice"} answers {"token": "..."} (and
creates alice's account on her first sign-in; a deactivated account is refused), and
``POST /dev/revoke`` {"user": "alice"} revokes her tokens issued until now (what ``imflow
revoke`` does; the embedded server's Redis lives in its own process, out of the command's reach).

Anyone may sign in as anyone, so the routes exist only where the ``dev_login`` setting is on
(by default only on the embedded server, which keeps everything in memory anyway). They let the
browser client in gateway/web/ sign in without a token printed by ``imflow token``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from imflow.core import accounts, revocation, tokens
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.models import USER_ID_PATTERN

from .http_api import error_response, json_body

if TYPE_CHECKING:
    from starlette.requests import Request

MAX_BODY = 4096
LOOPBACK = {"127.0.0.1", "::1"}


def _user(body: dict[str, Any]) -> str:
    user = body.get("user")
    if not isinstance(user, str) or not USER_ID_PATTERN.fullmatch(user):
        raise ImflowError(ErrorCode.BAD_FRAME, "give {\"user\": ...}: 1-64 letters, digits, '_', '.' or '-'")
    return user


async def _requested_user(request: Request) -> str:
    # on by default (the embedded server) it answers this machine only: `imflow serve --host
    # 0.0.0.0` must not let the network sign in as anyone; IMFLOW_DEV_LOGIN=true opens it up
    if request.app.state.backend.settings.dev_login is None and (request.client is None or request.client.host not in LOOPBACK):
        raise ImflowError(ErrorCode.FORBIDDEN, "development sign-in answers this machine only")
    return _user(await json_body(request, MAX_BODY))


async def issue_token(request: Request) -> JSONResponse:
    backend = request.app.state.backend
    settings = backend.settings
    try:
        user = await _requested_user(request)
        await accounts.sign_in(backend.services, user)  # registered on first sign-in, as the app's backend would
    except ImflowError as error:
        return error_response(error)
    token = tokens.issue(settings.secret_key.get_secret_value(), user, settings.token_ttl_seconds)
    return JSONResponse({"token": token, "user": user}, headers={"Cache-Control": "no-store"})


async def revoke_tokens(request: Request) -> JSONResponse:
    """{"user"} -> {"user", "revoked_ms"}: the user's tokens issued until now are refused and
    their sessions end on every gateway."""
    try:
        user = await _requested_user(request)
    except ImflowError as error:
        return error_response(error)
    revoked = await revocation.revoke(request.app.state.backend.redis, user)
    return JSONResponse({"user": user, "revoked_ms": revoked.before_ms}, headers={"Cache-Control": "no-store"})


def routes(settings: Any) -> list[BaseRoute]:
    """The routes when development sign-in is on for these settings, else none (a 404)."""
    if not settings.dev_login_enabled:
        return []
    return [Route("/dev/token", issue_token, methods=["POST"]), Route("/dev/revoke", revoke_tokens, methods=["POST"])]
