"""Groups over HTTP: the same operations as the WebSocket frames, for servers and scripts.

Each request becomes the frame it stands for and goes through the same parsing and the same
handler, so rules, limits and error codes are the WebSocket's. ``Authorization: Bearer
<token>`` names the user; errors are ``{"error": {"code", "message"}}`` with a 4xx status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imflow.core import accounts
from imflow.core.errors import ErrorCode, ImflowError

from . import operations, protocol

if TYPE_CHECKING:
    from starlette.requests import Request

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
STATUS: dict[str, int] = {  # by error code (ErrorCode members are their strings)
    ErrorCode.BAD_JSON: 400,
    ErrorCode.BAD_FRAME: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.TOKEN_EXPIRED: 401,
    ErrorCode.TOKEN_INVALID: 401,
    ErrorCode.TOKEN_REVOKED: 401,
    ErrorCode.UNKNOWN_USER: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.BLOCKED: 403,
    ErrorCode.CONTACTS_ONLY: 403,
    ErrorCode.USER_DEACTIVATED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


@dataclass(frozen=True)
class Caller:
    """What an operation needs of a connection, for a request that has none."""

    user: str
    id: str = ""  # no connection: pushes to "the user's other devices" go to all of them


def error_response(error: ImflowError) -> JSONResponse:
    return JSONResponse({"error": error.to_dict()}, status_code=STATUS.get(str(error.code), 400))


async def _user(request: Request) -> str:
    """The user of the request's bearer token, whose account may make requests; raises
    ImflowError (unauthenticated, token_invalid, token_expired, token_revoked, unknown_user,
    user_deactivated, unavailable)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ImflowError(ErrorCode.UNAUTHENTICATED, "send 'Authorization: Bearer <token>' (imflow token <user> prints one)")
    return (await accounts.authenticate(request.app.state.backend.services, token.strip())).user


async def json_body(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON object (empty for GET and DELETE), size-checked before it is read."""
    if request.method in ("GET", "DELETE"):
        return {}
    length = request.headers.get("content-length") or "0"
    if not length.isdigit() or int(length) > limit:
        raise ImflowError(ErrorCode.FRAME_TOO_LARGE, f"request bodies are limited to {limit} bytes")
    data = await request.body()
    if len(data) > limit:  # a chunked body has no length to check first
        raise ImflowError(ErrorCode.FRAME_TOO_LARGE, f"request bodies are limited to {limit} bytes")
    try:
        body = orjson.loads(data or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ImflowError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ImflowError(ErrorCode.BAD_FRAME, "the body is a JSON object")
    return body


def _endpoint(frame_class: type[protocol.ClientFrame], status: int = 200) -> Any:
    op = protocol.op_of(frame_class)

    async def handle(request: Request) -> Response:
        try:
            user = await _user(request)
            # path parameters win over the body, and 'op' comes from the route
            frame = {**(await json_body(request)), **request.path_params, "op": op}
            if frame_class is protocol.RemoveMember and frame.get("user") == user:
                frame = {"op": protocol.op_of(protocol.LeaveGroup), "gid": frame["gid"]}
            parsed = protocol.parse(orjson.dumps(frame))
            state = request.app.state
            reply = await operations.handle(parsed, Caller(user), state.backend, state.extensions)  # type: ignore[arg-type]
        except ImflowError as error:
            return error_response(error)
        except Exception:
            log.exception("HTTP %s failed", op)
            failed = {"error": {"code": str(ErrorCode.INTERNAL), "message": "the server failed; retry the request"}}
            return JSONResponse(failed, status_code=500)
        return JSONResponse(reply, status_code=status)

    return handle


ROUTES = [
    Route("/api/groups", _endpoint(protocol.CreateGroup, 201), methods=["POST"]),
    Route("/api/groups", _endpoint(protocol.MyGroups), methods=["GET"]),
    Route("/api/groups/{gid}/members", _endpoint(protocol.GroupMembers), methods=["GET"]),
    Route("/api/groups/{gid}/members", _endpoint(protocol.AddMembers), methods=["POST"]),
    Route("/api/groups/{gid}/members/{user}", _endpoint(protocol.RemoveMember), methods=["DELETE"]),
    Route("/api/groups/{gid}/members/{user}/role", _endpoint(protocol.SetRole), methods=["PUT"]),
]
