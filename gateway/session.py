"""One client's WebSocket session: authenticate with the first frame, then serve operations."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from imflow.core import presence, tokens
from imflow.core.errors import ErrorCode, ImflowError

from . import operations, protocol
from .hub import Connection

if TYPE_CHECKING:
    from .app import Backend
    from .extensions import Extensions
    from .hub import Hub

log = logging.getLogger(__name__)

AUTH_TIMEOUT_S = 10
CLOSE_UNAUTHENTICATED = 4401
CLOSE_TOO_LARGE = 1009


async def serve_session(websocket: WebSocket, backend: Backend, hub: Hub, extensions: Extensions) -> None:
    await websocket.accept()
    user = await _authenticate(websocket, backend)
    if user is None:
        return
    connection = Connection(websocket, user, backend.settings.outbound_queue_frames, backend.settings.slow_consumer_seconds)
    connection.push({"op": "welcome", "user": user, "node": backend.node_name})  # always the first frame
    hub.add(connection)
    try:
        await _presence(presence.connected, backend, user)
        await backend.hooks.call("imflow_on_connect", user=user, node=backend.node_name, connection=connection)
        # the welcome goes out once pushes reach this connection, and any queued meanwhile follow it
        connection.open()
        await _serve(websocket, backend, connection, extensions)
    finally:
        hub.remove(connection)
        await _presence(presence.disconnected, backend, user)
        await backend.hooks.call("imflow_on_disconnect", user=user, node=backend.node_name, connection=connection)
        await connection.finish()


async def _presence(change: Any, backend: Backend, user: str) -> None:
    """Record where the user is; if Redis is out, the session goes on (pushes may miss it, sync won't)."""
    try:
        await change(backend.redis, user, backend.node_name)
    except Exception as exc:
        log.warning("presence of %s not recorded (%s); the client will still sync", user, exc)


async def _authenticate(websocket: WebSocket, backend: Backend) -> str | None:
    """The user of a valid first ``auth`` frame; otherwise an error frame, a 4401 close and None."""
    try:
        message = await asyncio.wait_for(websocket.receive(), AUTH_TIMEOUT_S)
    except (TimeoutError, asyncio.TimeoutError):
        error = ImflowError(ErrorCode.UNAUTHENTICATED, f"send an auth frame within {AUTH_TIMEOUT_S} s")
        return await _refuse(websocket, error, None)
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
        return tokens.verify(backend.settings.secret_key.get_secret_value(), frame.token)
    except ImflowError as error:
        return await _refuse(websocket, error, protocol.ref_of(text))


async def _refuse(websocket: WebSocket, error: ImflowError, ref: Any) -> None:
    try:
        await websocket.send_json(protocol.error_frame(error, ref))
        code = CLOSE_TOO_LARGE if error.code == ErrorCode.FRAME_TOO_LARGE else CLOSE_UNAUTHENTICATED
        await websocket.close(code, str(error.code))
    except Exception:  # the client left already
        pass
    return None


def _frame_text(message: dict[str, Any]) -> str | None:
    """A frame's text (binary frames are read as UTF-8), or None when the client left."""
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None:
        text = (message.get("bytes") or b"").decode("utf-8", "replace")
    return text


def _check_size(text: str, backend: Backend) -> None:
    # uvicorn already closes with 1009 above ws_max_size; this covers servers that do not
    if len(text) > backend.settings.max_frame_bytes:
        raise ImflowError(ErrorCode.FRAME_TOO_LARGE, f"frames are limited to {backend.settings.max_frame_bytes} bytes")


async def _serve(websocket: WebSocket, backend: Backend, connection: Connection, extensions: Extensions) -> None:
    plugin_ops = frozenset(extensions.operations)
    while not connection.closed.is_set():
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        text = _frame_text(message)
        if text is None:
            return
        ref = None
        try:
            _check_size(text, backend)
            frame = protocol.parse(text, plugin_ops)
            ref = frame.ref
            reply = await operations.handle(frame, connection, backend, extensions)
        except ImflowError as error:
            connection.push(protocol.error_frame(error, ref if ref is not None else protocol.ref_of(text)))
            if error.code == ErrorCode.FRAME_TOO_LARGE:
                connection.close(CLOSE_TOO_LARGE, str(error.code))
            continue
        except Exception:
            log.exception("operation failed for %s", connection.user)
            error = ImflowError(ErrorCode.INTERNAL, "the server failed on this frame; retry it (operations are idempotent)")
            connection.push(protocol.error_frame(error, ref))
            continue
        if reply is not None:
            if ref is not None:
                reply["ref"] = ref
            connection.push(reply)
