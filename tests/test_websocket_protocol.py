"""The gateway's WebSocket protocol (gateway/websocket_protocol.py) against clients that stop
reading, on a real uvicorn server with uvloop: every way a socket closes lets it go within the
close grace (a transport.close() alone waits for a flush that never comes), and pings from a
client that reads nothing pile up no pongs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn
from starlette.websockets import WebSocket

from imflow.gateway import websocket_protocol
from imflow.gateway.hub import Connection
from imflow.gateway.websocket_protocol import DirectWebSocketProtocol
from imflow.testing import eventually, listening_socket

GRACE_S = 0.5


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients mask, RFC 6455 §5.3)."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def stuck_client(port: int) -> socket.socket:
    """Upgrades, then reads nothing more: a 4 kB receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)  # byte by byte: nothing past the handshake is read
    return sock


@contextlib.asynccontextmanager
async def server(session: Callable[[Connection], Any], **options: Any) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """A uvicorn server with DirectWebSocketProtocol whose app runs ``session`` on a Connection."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        websocket = WebSocket(scope, receive, send)
        await websocket.accept()
        connection = Connection(websocket, "viewer", buffer_bytes=64 * 1024, slow_seconds=3.0, kernel_buffer=4096)
        connection.open()
        await session(connection)
        while not connection.is_closed and (await websocket.receive())["type"] != "websocket.disconnect":
            pass
        await connection.finish()

    with contextlib.closing(listening_socket()) as sock:
        config = uvicorn.Config(app, ws=DirectWebSocketProtocol, loop="uvloop", log_level="warning", **options)
        running = uvicorn.Server(config)
        serving = asyncio.create_task(running.serve(sockets=[sock]))
        while not running.started:
            await asyncio.sleep(0.02)
        try:
            yield running, sock.getsockname()[1]
        finally:
            running.should_exit = True
            await serving


async def flood(connection: Connection) -> None:
    for _ in range(300):  # 300 kB for a client that reads nothing
        connection.push_raw(b"x" * 1000)


async def _released(running: uvicorn.Server) -> bool:
    return not running.server_state.connections


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websocket_protocol, "CLOSE_GRACE_S", GRACE_S)


@pytest.mark.parametrize("how", ["our close, then the client's", "the client's close", "a keepalive timeout"])
async def test_a_socket_whose_client_reads_nothing_is_let_go_however_it_closes(how: str) -> None:
    pings = {"ws_ping_interval": 0.3, "ws_ping_timeout": 0.3} if how == "a keepalive timeout" else {"ws_ping_interval": None}

    async def session(connection: Connection) -> None:
        await flood(connection)
        if how.startswith("our close"):
            connection.close(4008, "too slow")

    async with server(session, **pings) as (running, port):
        client = await asyncio.to_thread(stuck_client, port)
        try:
            await eventually(lambda: _now(bool(running.server_state.connections)), timeout=5)
            if how != "a keepalive timeout":
                await asyncio.sleep(0.2)
                client.sendall(_masked(0x8, struct.pack("!H", 1000)))  # it can still write
            started = time.monotonic()
            await eventually(lambda: _released(running), timeout=10)
            assert time.monotonic() - started < GRACE_S + 3, "let go within the close grace"
        finally:
            client.close()


async def test_pings_from_a_client_that_reads_nothing_pile_up_no_pongs() -> None:
    async def session(connection: Connection) -> None:
        for _ in range(100):  # 100 kB: past the 64 kB high-water mark (paused), short of a close
            connection.push_raw(b"x" * 1000)

    async with server(session, ws_ping_interval=None) as (running, port):
        client = await asyncio.to_thread(stuck_client, port)
        client.settimeout(0.5)
        burst = _masked(0x9, b"p" * 125) * 400
        stop = time.monotonic() + 1.5

        def send_pings() -> None:
            while time.monotonic() < stop:
                with contextlib.suppress(OSError):
                    client.sendall(burst)

        sender = threading.Thread(target=send_pings)
        sender.start()
        peak = 0
        try:
            while time.monotonic() < stop + 0.5:
                await asyncio.sleep(0.1)
                peak = max([peak, *(p.transport.get_write_buffer_size() for p in running.server_state.connections)])
        finally:
            sender.join()
            client.close()
        assert peak < 1024 * 1024, f"{peak} bytes of pongs held for a client that reads nothing"


async def _now(value: Any) -> Any:
    return value
