"""One client's WebSocket session: authenticate with the first frame, then serve operations."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from imflow.core import accounts
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.ids import now_ms

from . import frames, operations, protocol
from .hub import CLOSE_UNAUTHENTICATED, Connection

if TYPE_CHECKING:
    from collections.abc import Mapping

    from imflow.core.tokens import TokenClaims

    from .app import Backend
    from .extensions import Extensions
    from .hub import Hub

log = logging.getLogger(__name__)

AUTH_TIMEOUT_S = 10
CLOSE_TOO_LARGE = 1009
CLOSE_TRY_AGAIN = 1013  # the token could not be checked (Redis is out): reconnect shortly


async def serve_session(websocket: WebSocket, backend: Backend, hub: Hub, extensions: Extensions) -> None:
    await websocket.accept()
    claims = await _authenticate(websocket, backend)
    if claims is None:
        return
    user = claims.user
    s = backend.settings
    connection = Connection(websocket, user, s.outbound_buffer_bytes, s.slow_consumer_seconds, s.socket_send_buffer_bytes)
    connection.authorize(claims)  # the session ends at the token's expiry unless re-authenticated
    # always the first frame
    connection.push({"op": "welcome", "user": user, "node": backend.node_name, **_lifetime(claims)})
    hub.add(connection)  # after the token check: a revocation heard meanwhile still ends it
    try:
        await _presence(hub, user, came=True)
        await backend.hooks.call.on_connect(user=user, node=backend.node_name, connection=connection)
        # the welcome goes out once pushes reach this connection, and any queued meanwhile follow it
        connection.open()
        await _serve(websocket, backend, connection, extensions)
    finally:
        hub.remove(connection)
        await _presence(hub, user, came=False)
        await backend.hooks.call.on_disconnect(user=user, node=backend.node_name, connection=connection)
        await connection.finish()


async def _presence(hub: Hub, user: str, came: bool) -> None:
    """Record where the user is; if Redis is out, the session goes on (pushes may miss it, sync
    won't), and the hub's next beat sets the user's count on this gateway to what it holds."""
    try:
        await hub.record_presence(user, came)
    except Exception as exc:
        hub.presence_unsure.add(user)
        log.warning("presence of %s not recorded or not published (%s); the next heartbeat sets it", user, exc)


def _lifetime(claims: TokenClaims) -> dict[str, int]:
    """When the session's token expires: a Unix time in ms (the server's clock), and in ms from
    now (for clients whose clock differs), so the client can re-authenticate before it."""
    return {"expires_at_ms": claims.expires_ms, "expires_in_ms": max(0, claims.expires_ms - now_ms())}


async def _authenticate(websocket: WebSocket, backend: Backend) -> TokenClaims | None:
    """The claims of a valid first ``auth`` frame whose user's account may sign in (core/accounts.py
    ``authenticate``); otherwise an error frame, a close (4401, or 1013 when the token cannot be
    checked now) and None."""
    try:
        message = await asyncio.wait_for(websocket.receive(), AUTH_TIMEOUT_S)
    except TimeoutError:
        error = ImflowError(ErrorCode.UNAUTHENTICATED, f"send an auth frame within {AUTH_TIMEOUT_S} s")
        await _refuse(websocket, error, None)
        return None
    except (WebSocketDisconnect, RuntimeError):
        return None
    text = _frame_text(message)
    if text is None:
        return None
    try:
        _check_size(text, backend)
        frame = protocol.parse(text)
        if not isinstance(frame, protocol.Auth):
            raise ImflowError(ErrorCode.UNAUTHENTICATED, "the first frame must be {\"op\": \"auth\", \"token\": ...}")
        return await accounts.authenticate(backend.services, frame.token)
    except ImflowError as error:
        await _refuse(websocket, error, protocol.ref_of(text))
        return None


async def _refuse(websocket: WebSocket, error: ImflowError, ref: Any) -> None:
    try:
        await websocket.send_json(frames.error(error, ref))
        closes = {str(ErrorCode.FRAME_TOO_LARGE): CLOSE_TOO_LARGE, str(ErrorCode.UNAVAILABLE): CLOSE_TRY_AGAIN}
        code = closes.get(str(error.code), CLOSE_UNAUTHENTICATED)
        await websocket.close(code, str(error.code))
    except Exception:  # the client left already
        pass
    return None


def _frame_text(message: Mapping[str, Any]) -> str | bytes | None:
    """A frame's text, or a binary frame's bytes as they came (protocol.parse refuses any that
    are not UTF-8: nothing is ever replaced with U+FFFD), or None when the client left."""
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None:
        return message.get("bytes") or b""
    return text


def _check_size(text: str | bytes, backend: Backend) -> None:
    # uvicorn already closes with 1009 above ws_max_size; this covers servers that do not
    if len(text) > backend.settings.max_frame_bytes:
        raise ImflowError(ErrorCode.FRAME_TOO_LARGE, f"frames are limited to {backend.settings.max_frame_bytes} bytes")


async def _serve(websocket: WebSocket, backend: Backend, connection: Connection, extensions: Extensions) -> None:
    plugin_ops = frozenset(extensions.operations)
    while not connection.is_closed:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        text = _frame_text(message)
        if text is None:
            return
        if connection.is_closed or connection.check_expiry():
            return  # the session ended (its token expired or was revoked) as the frame came: not served
        ref = None
        try:
            _check_size(text, backend)
            frame = protocol.parse(text, plugin_ops)
            ref = frame.ref
            if isinstance(frame, protocol.Auth):
                reply = await _reauthenticate(frame, connection, backend)
            else:
                reply = await operations.handle(frame, connection, backend, extensions)
        except ImflowError as error:
            connection.push(frames.error(error, ref if ref is not None else protocol.ref_of(text)))
            if error.code == ErrorCode.FRAME_TOO_LARGE:
                connection.close(CLOSE_TOO_LARGE, str(error.code))
            continue
        except Exception:
            log.exception("operation failed for %s", connection.user)
            failure = ImflowError(ErrorCode.INTERNAL, "the server failed on this frame; retry it (operations are idempotent)")
            connection.push(frames.error(failure, ref))
            continue
        if reply is not None:
            if ref is not None:
                reply["ref"] = ref
            connection.push(reply)


async def _reauthenticate(frame: protocol.Auth, connection: Connection, backend: Backend) -> dict[str, Any] | None:
    """``auth`` on an authenticated socket: a fresh token of the same user replaces the session's
    token, and so its expiry; the reply is ``reauthed``. A refused token (token_invalid,
    token_expired, token_revoked, unknown_user, user_deactivated, unavailable, or forbidden for
    another user's) leaves the session as it was: it still ends when its own token expires."""
    claims = await accounts.authenticate(backend.services, frame.token)
    if claims.user != connection.user:
        raise ImflowError(
            ErrorCode.FORBIDDEN, f"this connection is {connection.user}'s; open a new connection to sign in as another user"
        )
    if connection.is_closed:  # revoked or expired while the token was checked
        return None
    connection.authorize(claims)
    return {"op": "reauthed", "user": claims.user, **_lifetime(claims)}
