"""The admin HTTP API: the app's backend manages accounts (docs/protocol.md, "Admin API").

``Authorization: Bearer <IMFLOW_ADMIN_SECRET>`` on every request (compared in constant time);
without the setting the API answers ``forbidden``. Each route parses its request, calls one
service of core/accounts.py and renders its result; errors are ``{"error": {"code",
"message"}}`` with the statuses of gateway/http_api.py.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse
from starlette.routing import Route

from imflow.core import accounts
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.storage.redis_client import STORAGE_UNAVAILABLE

from .http_api import error_response, json_body

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.requests import Request

    from imflow.core.services import Services

log = logging.getLogger(__name__)
Answer = tuple[int, dict[str, Any]]  # an admin call's HTTP status and JSON body
NO_STORE = {"Cache-Control": "no-store"}  # profiles and tokens are nobody's cache's business


def _require_admin(request: Request) -> None:
    """Raise ``forbidden`` when no admin secret is set, ``unauthenticated`` unless the request
    carries it as its bearer token."""
    secret = request.app.state.backend.settings.admin_secret
    if secret is None:
        raise ImflowError(ErrorCode.FORBIDDEN, "the admin API is off: set IMFLOW_ADMIN_SECRET")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: how long the comparison takes says nothing of the secret
    given = given.strip()
    if scheme.lower() != "bearer" or not given or not hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
        raise ImflowError(ErrorCode.UNAUTHENTICATED, "send 'Authorization: Bearer <IMFLOW_ADMIN_SECRET>'")


async def _body(request: Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The JSON object of the request, with no field but ``allowed`` (else ``bad_frame``)."""
    limit = max(65_536, 4 * request.app.state.backend.settings.profile_custom_max_bytes)
    body = await json_body(request, limit)
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        given = ", ".join(map(repr, unknown))
        raise ImflowError(ErrorCode.BAD_FRAME, f"unknown field(s) {given}; give {', '.join(allowed) or 'none'}")
    return body


def _profile_fields(services: Services, body: dict[str, Any]) -> accounts.ProfileFields:
    return accounts.profile_fields(body, services.settings.profile_custom_max_bytes)


async def create_user(request: Request, services: Services) -> Answer:
    body = await _body(request, ("user", *accounts.PROFILE_FIELDS))
    user = accounts.require_user_id(body.pop("user", None))
    return 201, (await accounts.create(services, accounts.CreateAccount(user, _profile_fields(services, body)))).to_dict()


async def list_users(request: Request, services: Services) -> Answer:
    query = request.query_params
    unknown = sorted(set(query) - {"after", "limit"})
    if unknown:
        raise ImflowError(ErrorCode.BAD_FRAME, f"unknown parameter(s) {', '.join(unknown)}; give after, limit")
    limit = query.get("limit", "100")
    if not limit.isdigit():
        raise ImflowError(ErrorCode.BAD_FRAME, f"limit is 1-{accounts.PAGE_MAX}")
    page = await accounts.list_accounts(services, accounts.ListAccounts(query.get("after") or None, int(limit)))
    return 200, {"users": [profile.to_dict() for profile in page.users], "next_after": page.next_after}


async def show_user(request: Request, services: Services) -> Answer:
    return 200, (await accounts.get(services, accounts.GetAccount(request.path_params["user"]))).to_dict()


async def update_user(request: Request, services: Services) -> Answer:
    fields = _profile_fields(services, await _body(request, accounts.PROFILE_FIELDS))
    return 200, (await accounts.update(services, accounts.UpdateProfile(request.path_params["user"], fields))).to_dict()


async def deactivate_user(request: Request, services: Services) -> Answer:
    await _body(request, ())
    return 200, (await accounts.deactivate(services, accounts.Deactivate(request.path_params["user"]))).to_dict()


async def reactivate_user(request: Request, services: Services) -> Answer:
    await _body(request, ())
    return 200, (await accounts.reactivate(services, accounts.Reactivate(request.path_params["user"]))).to_dict()


async def issue_token(request: Request, services: Services) -> Answer:
    body = await _body(request, ("ttl_seconds",))
    command = accounts.IssueToken(request.path_params["user"], body.get("ttl_seconds"))
    return 201, asdict(await accounts.issue_token(services, command))


def _endpoint(serve: Callable[[Request, Services], Awaitable[Answer]]) -> Callable[[Request], Awaitable[JSONResponse]]:
    """The route of one admin call: the secret checked, then ``serve``, its result as JSON."""

    async def endpoint(request: Request) -> JSONResponse:
        try:
            _require_admin(request)
            status, result = await serve(request, request.app.state.backend.services)
        except ImflowError as error:
            return error_response(error)
        except STORAGE_UNAVAILABLE:  # Redis away: a coded answer the backend can retry on (503)
            return error_response(ImflowError(ErrorCode.UNAVAILABLE, "storage is unavailable; retry shortly"))
        except Exception:
            log.exception("admin %s %s failed", request.method, request.url.path)
            failed = ImflowError(ErrorCode.INTERNAL, "the server failed; retry the request")
            return error_response(failed)
        return JSONResponse(result, status_code=status, headers=NO_STORE)

    return endpoint


ROUTES = [
    Route("/admin/users", _endpoint(create_user), methods=["POST"]),
    Route("/admin/users", _endpoint(list_users), methods=["GET"]),
    Route("/admin/users/{user}", _endpoint(show_user), methods=["GET"]),
    Route("/admin/users/{user}", _endpoint(update_user), methods=["PATCH"]),
    Route("/admin/users/{user}/deactivate", _endpoint(deactivate_user), methods=["POST"]),
    Route("/admin/users/{user}/reactivate", _endpoint(reactivate_user), methods=["POST"]),
    Route("/admin/users/{user}/tokens", _endpoint(issue_token), methods=["POST"]),
]
