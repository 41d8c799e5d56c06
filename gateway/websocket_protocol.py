"""The gateway's WebSocket server protocol: uvicorn's sans-I/O websockets implementation, plus a
way for a session to write frames straight to its socket (the ASGI extension ``imflow.direct``).

Through ASGI every frame to every client is a coroutine: ``send_text`` through Starlette and
uvicorn, framed per connection. A live room's batch to 10,000 viewers is the same frame 10,000
times, so the gateway frames it once (``frame_wire``) and writes the same bytes to each socket's
transport, synchronously: no task wake-up, no allocation per viewer. The transport tells the
connection when its buffer passes the high-water mark and when it drains (``DirectSink``), which
is how the gateway judges a slow consumer by bytes and time (gateway/hub.py ``Connection``).

uvicorn's sans-I/O implementation is the base because it holds the least per connection: no
task besides the application's (its legacy one runs three per connection). The ASGI path still
works for everything else (accept, the handshake's refusals, a server without this protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Any, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode

if TYPE_CHECKING:
    from imflow.core.plugin_types import PreparedFrame

EXTENSION = "imflow.direct"  # scope["extensions"][EXTENSION] is the connection's DirectSink
CLOSE_GRACE_S = 10.0  # after our close frame: how long a client has to answer before the socket is cut (as uvicorn)


def frame_wire(frame: PreparedFrame) -> bytes:
    """The frame as it goes on the wire: a final, unmasked text frame (RFC 6455 §5.2) holding
    ``frame.data``; made once per PreparedFrame and kept in it."""
    wire = frame.wire
    if wire is None:
        wire = frame.wire = Frame(Opcode.TEXT, frame.data).serialize(mask=False)
    return wire


class Listener(Protocol):
    """Who hears of a socket's send buffer filling up and draining (a gateway Connection)."""

    def writing_paused(self) -> None: ...
    def writing_resumed(self) -> None: ...


class DirectSink(Protocol):
    """What a session gets under ``scope["extensions"]["imflow.direct"]``."""

    paused: bool  # the transport's buffer is past its high-water mark

    @property
    def gone(self) -> bool:
        """The socket is closing or closed: nothing more will be written or drained."""
        ...

    def listen(self, listener: Listener, high_water: int, kernel_buffer: int = 0) -> None:
        """Tell ``listener`` when the buffer passes ``high_water`` bytes and when it drains to a
        quarter; ``kernel_buffer`` > 0 sets the socket's kernel send buffer (SO_SNDBUF)."""
        ...

    def write_frame(self, wire: bytes) -> bool:
        """Write a framed message now; False if the socket is closing (nothing written)."""
        ...

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        ...

    def close_now(self, code: int, reason: str, last: bytes | None = None) -> None:
        """Send ``last`` (a framed message) if given, then a close frame with ``code``; the
        session's next receive is the disconnect, and a client that does not answer within
        CLOSE_GRACE_S is cut off (its unread bytes are let go)."""
        ...


class Inbox:
    """What uvicorn's asyncio.Queue did for the protocol, for a fifth of the memory (a Queue holds
    four deques of 600 bytes each, times every idle connection): the ASGI events waiting for the
    application's one ``receive`` (a few at most: uvicorn stops reading while one waits)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol that is also a DirectSink for the application, and
    holds less per connection (``Inbox``; the handshake's request and response let go once sent)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.paused = False
        self._listener: Listener | None = None

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            self.request = self.response = None  # type: ignore[assignment]  # read only up to the handshake

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # only a request that is upgraded gets a scope
        if scope is not None:
            scope["extensions"][EXTENSION] = self

    @property
    def gone(self) -> bool:
        """The socket is closing or closed: nothing more will be written or drained."""
        return self.close_sent or self.disconnected or self.transport.is_closing()

    def listen(self, listener: Listener, high_water: int, kernel_buffer: int = 0) -> None:
        if self.gone:  # the client left while its token was checked
            return
        self._listener = listener
        self.transport.set_write_buffer_limits(high=high_water)  # low: a quarter (asyncio's default)
        sock = self.transport.get_extra_info("socket")
        if kernel_buffer > 0 and sock is not None:
            # Linux lets a send buffer grow to 4 MB: the gateway would see a stuck client only
            # after that much, held in kernel memory for every such connection
            with contextlib.suppress(OSError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, kernel_buffer)

    # Every way a socket closes ends within CLOSE_GRACE_S: uvicorn's transport.close() waits until
    # the buffer is flushed, which for a client that stopped reading is never (its socket, buffer
    # and session would be held for good).
    def _abort_later(self) -> None:
        if self.close_timer is None and not self.disconnected:
            self.close_timer = self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)

    def handle_close(self, event: Any) -> None:
        super().handle_close(event)  # a client's close frame: it may still not read what we sent
        self._abort_later()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1011, "reason": "keepalive ping timeout"})
        self._abort_later()

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()
        self._abort_later()

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)  # after run_asgi closed the transport
        self._abort_later()

    def handle_ping(self) -> None:
        if self.paused:  # a client that sends pings but reads nothing: no pongs pile up for it
            self.conn.data_to_send()  # (RFC 6455 §5.5.3 allows answering only the latest ping)
            return
        super().handle_ping()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.paused = True
        if self._listener is not None:
            self._listener.writing_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.paused = False
        if self._listener is not None:
            self._listener.writing_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener = None  # the connection is gone; nothing to drain into
        super().connection_lost(exc)

    def write_frame(self, wire: bytes) -> bool:
        if self.gone:
            return False
        self.transport.write(wire)
        return True

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    def close_now(self, code: int, reason: str, last: bytes | None = None) -> None:
        if self.gone:
            return
        if last is not None:
            self.transport.write(last)
        try:
            self.conn.send_close(code, reason)
        except InvalidState:  # the client is closing already: its close is being answered
            return
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self.read_paused:  # read on, so the client's answer to our close is heard
            self.read_paused = False
            self.transport.resume_reading()
        self._abort_later()


def direct_sink(scope: dict[str, Any]) -> DirectSink | None:
    """The connection's DirectSink, when the server runs DirectWebSocketProtocol; else None."""
    extensions = scope.get("extensions") or {}
    sink: DirectSink | None = extensions.get(EXTENSION)
    return sink


def uvicorn_options(max_frame_bytes: int) -> dict[str, Any]:
    """uvicorn's WebSocket options for a gateway: this protocol, the frame size limit (larger
    frames close with 1009), and no per-message deflate (chat frames are small; compressing
    them costs more CPU than it saves, and a compressed frame could not be shared)."""
    return {"ws": DirectWebSocketProtocol, "ws_max_size": max_frame_bytes, "ws_per_message_deflate": False}
