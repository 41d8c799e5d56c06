"""A connection's outbound queue: low priority goes first when a client falls behind, and a
client that stays behind is closed with 4008. A fake socket that never finishes a send stands
in for a client that stopped reading."""

from __future__ import annotations

import asyncio
import time

from imflow.core.plugin_types import Priority
from imflow.gateway.hub import CLOSE_SLOW_CONSUMER, Connection
from imflow.testing import eventually


class StuckSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed_with: int | None = None
        self.gate = asyncio.Event()

    async def send_text(self, text: str) -> None:
        await self.gate.wait()  # never set: the client does not read
        self.sent.append(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = code


async def stuck_connection(limit: int = 4, slow_seconds: float = 60) -> tuple[Connection, StuckSocket]:
    socket = StuckSocket()
    connection = Connection(socket, "viewer", limit, slow_seconds)  # type: ignore[arg-type]
    connection.open()
    connection.push_raw(b"in flight")  # the writer takes it and blocks on the socket
    await eventually(lambda: _now(connection.queued == 0), timeout=5, interval=0)
    return connection, socket


async def _now(value):
    return value


async def test_low_priority_frames_go_first_when_the_queue_is_full() -> None:
    connection, socket = await stuck_connection()
    for i in range(4):
        connection.push_raw(f"chat {i}".encode(), Priority.LOW)
    connection.push_raw(b"chat 4", Priority.LOW)  # full: a low one is dropped
    assert connection.dropped == 1 and connection.queued == 4
    connection.push_raw(b"gift", Priority.HIGH)  # full: it takes the place of a queued chat frame
    assert connection.dropped == 2 and connection.queued == 4
    assert [data for _, data in connection._queue][-1] == b"gift"
    assert not connection.is_closed
    await connection.finish()


async def test_a_connection_that_cannot_keep_even_its_important_frames_is_closed() -> None:
    connection, socket = await stuck_connection(limit=4)
    for i in range(8):
        connection.push_raw(f"host {i}".encode(), Priority.HIGH)
    assert not connection.is_closed, "up to twice the queue for frames that may not be dropped"
    connection.push_raw(b"host 8", Priority.HIGH)
    assert connection.is_closed
    assert await eventually(lambda: _now(socket.closed_with), timeout=5, interval=0) == CLOSE_SLOW_CONSUMER


async def test_a_connection_whose_queue_stays_full_is_closed() -> None:
    connection, socket = await stuck_connection(limit=2, slow_seconds=0.2)
    for i in range(3):
        connection.push_raw(f"m{i}".encode())
    assert connection.slow and not connection.is_closed
    connection.check_slow(time.monotonic() + 0.3)  # what the hub does twice a second, 0.3 s later
    assert connection.is_closed
    assert await eventually(lambda: _now(socket.closed_with), timeout=5, interval=0) == CLOSE_SLOW_CONSUMER
