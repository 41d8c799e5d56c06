"""A connection's way out, judged by bytes and time: low priority goes first when a client falls
behind, a client that stays behind (or piles up twice the outbound buffer) is closed with 4008,
one that is slow for a moment is not. A fake sink stands in for the socket's transport (its
buffer, high-water pause and drain); a fake socket that never finishes a send stands in for a
client of the ASGI path that stopped reading."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from imflow.core.plugin_types import Priority
from imflow.gateway.hub import CLOSE_SLOW_CONSUMER, Connection
from imflow.gateway.websocket_protocol import EXTENSION
from imflow.testing import eventually

LIMIT = 1000  # the connection's outbound buffer in bytes


class FakeSink:
    """A transport as DirectWebSocketProtocol sees it: written bytes stay buffered until the
    kernel takes them (``drain``); past ``high`` it pauses, at a quarter of it it resumes."""

    def __init__(self) -> None:
        self.paused = False
        self.buffer = 0
        self.high = 0
        self.listener: Any = None
        self.written: list[bytes] = []
        self.closed_with: int | None = None

    def listen(self, listener: Any, high_water: int, kernel_buffer: int = 0) -> None:
        self.listener, self.high = listener, high_water

    def write_frame(self, wire: bytes) -> bool:
        assert self.closed_with is None, "nothing is written after the close"
        self.written.append(wire)
        self.buffer += len(wire)
        if not self.paused and self.buffer > self.high:
            self.paused = True
            self.listener.writing_paused()
        return True

    def buffered(self) -> int:
        return self.buffer

    @property
    def gone(self) -> bool:
        return self.closed_with is not None

    def close_now(self, code: int, reason: str, last: bytes | None = None) -> None:
        self.closed_with = code

    def drain(self, taken: int) -> None:
        self.buffer = max(0, self.buffer - taken)
        if self.paused and self.buffer <= self.high // 4:
            self.paused = False
            self.listener.writing_resumed()

    def payloads(self) -> list[bytes]:
        return [wire[2:] if wire[1] < 126 else wire[4:] for wire in self.written]  # unmasked text frames


class FakeWebSocket:
    def __init__(self, sink: FakeSink) -> None:
        self.scope = {"extensions": {EXTENSION: sink}}


def direct_connection(slow_seconds: float = 3.0) -> tuple[Connection, FakeSink]:
    sink = FakeSink()
    connection = Connection(FakeWebSocket(sink), "viewer", LIMIT, slow_seconds)  # type: ignore[arg-type]
    connection.open()
    return connection, sink


async def test_frames_go_straight_out_while_the_socket_takes_them() -> None:
    connection, sink = direct_connection()
    for i in range(5):
        connection.push_raw(f"m{i}".encode(), Priority.LOW)
        sink.drain(10_000)
    assert sink.payloads() == [f"m{i}".encode() for i in range(5)] and connection.queued == 0
    assert not connection.slow and connection.dropped == 0


async def test_behind_drops_chat_keeps_the_rest_in_order_and_catches_up() -> None:
    connection, sink = direct_connection()
    connection.push_raw(b"x" * 1200)  # past the high-water mark: behind from now
    assert connection.slow
    connection.push_raw(b"chat", Priority.LOW)
    connection.push_raw(b"gift", Priority.HIGH)
    connection.push_raw(b"reply")
    assert connection.dropped == 1 and connection.queued == 2
    sink.drain(10_000)  # the client reads again
    assert sink.payloads()[1:] == [b"gift", b"reply"]
    assert not connection.slow and connection.queued == 0
    connection.check_slow(time.monotonic() + 60)
    assert sink.closed_with is None, "caught up: not closed"


async def test_a_connection_behind_for_too_long_is_closed() -> None:
    connection, sink = direct_connection(slow_seconds=3.0)
    connection.push_raw(b"x" * 1200)
    connection.check_slow(time.monotonic() + 2.5)
    assert sink.closed_with is None, "slow for a moment is allowed"
    connection.check_slow(time.monotonic() + 3.5)  # what the hub does twice a second
    assert sink.closed_with == CLOSE_SLOW_CONSUMER and connection.is_closed


async def test_a_client_that_reads_slowly_is_not_closed_for_it() -> None:
    """A page bigger than the buffer, on a slow link: it stays behind for long, but each sweep
    finds fewer bytes waiting, so it is reading and stays open."""
    connection, sink = direct_connection(slow_seconds=3.0)
    connection.push_raw(b"p" * 5000)  # one frame alone always goes, whatever its size
    start = time.monotonic()
    for second in range(1, 10):
        sink.drain(400)  # 400 bytes a second: slow, but reading
        connection.check_slow(start + second)
        assert not connection.is_closed, f"closed after {second} s while reading"
    connection.check_slow(start + 14)  # then it stops reading
    assert sink.closed_with == CLOSE_SLOW_CONSUMER


async def test_twice_the_buffer_waiting_closes_at_once() -> None:
    connection, sink = direct_connection()
    connection.push_raw(b"x" * 1200)  # buffered: 1200 of the 2000 allowed, behind
    connection.push_raw(b"h" * 700, Priority.HIGH)  # waits: 1900
    assert sink.closed_with is None
    connection.push_raw(b"h" * 200, Priority.HIGH)  # 2100: more than twice the buffer
    assert sink.closed_with == CLOSE_SLOW_CONSUMER and connection.is_closed


@st.composite
def events(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    steps = st.one_of(
        st.tuples(st.just("push"), st.integers(1, 700), st.sampled_from([int(p) for p in Priority])),
        st.tuples(st.just("drain"), st.integers(0, 3000), st.just(0)),
        st.tuples(st.just("sweep"), st.integers(0, 5), st.just(0)),  # seconds since falling behind
    )
    return draw(st.lists(steps, max_size=60))


@settings(max_examples=300, deadline=None)
@given(events())
def test_what_a_connection_writes_drops_and_holds(steps: list[tuple[str, int, int]]) -> None:
    """For any interleaving of pushes, drains and sweeps: what is written is what was pushed, in
    order, less dropped chat; only chat is dropped, and only while behind; the bytes held never
    pass twice the buffer by more than one frame; it is closed only for a reason."""

    async def run() -> None:
        connection, sink = direct_connection(slow_seconds=3.0)
        pushed: list[tuple[bytes, Priority, bool]] = []  # frame, priority, behind when pushed
        for number, (kind, size, priority) in enumerate(steps):
            if connection.is_closed:
                break
            if kind == "push":
                data = str(number).encode().ljust(size, b".")
                behind = connection.slow
                connection.push_raw(data, Priority(priority))
                pushed.append((data, Priority(priority), behind))
            elif kind == "drain":
                sink.drain(size)
            elif connection._behind_since is not None:
                was, reads = connection._behind_since, connection.queued_bytes < connection._held_at_sweep
                connection.check_slow(was + size)
                assert connection.is_closed == (size > 3 and not reads), "closed exactly when behind too long, not reading"
            assert sink.buffer + connection._waiting_bytes <= 2 * LIMIT + 700
        out = sink.payloads() + [frame.data for _, frame in (connection._waiting or ()) if frame is not None]
        position = 0
        for data, priority, behind in pushed:
            if position < len(out) and out[position] == data:
                position += 1
            else:
                assert connection.is_closed or (priority == Priority.LOW and behind), (
                    "only chat is ever dropped from a live connection, and only while it is behind"
                )
        assert position == len(out), "written and waiting frames are the pushed ones, in order"
        if not connection.is_closed:
            assert connection.dropped == len(pushed) - len(out)

    asyncio.run(run())


class StuckSocket:
    """An ASGI socket whose client stopped reading: a send never finishes."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed_with: int | None = None
        self.gate = asyncio.Event()

    async def send_text(self, text: str) -> None:
        await self.gate.wait()  # never set: the client does not read
        self.sent.append(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = code


async def _now(value: Any) -> Any:
    return value


async def test_the_asgi_path_counts_bytes_too() -> None:
    """Under a server without the direct path, the writer task holds one frame in flight and the
    rest wait here, judged by the same byte and time rules; chat that waited makes room for
    frames that may not be dropped."""
    socket = StuckSocket()
    connection = Connection(socket, "viewer", LIMIT, 3.0)  # type: ignore[arg-type]
    connection.open()
    connection.push_raw(b"in flight")  # the writer takes it and blocks on the socket
    await eventually(lambda: _now(connection.queued == 0), timeout=5, interval=0)
    connection.push_raw(b"c" * 300, Priority.LOW)  # waits: not behind yet
    connection.push_raw(b"x" * 800)  # 1100 wait: behind
    assert connection.slow and connection.dropped == 0
    connection.push_raw(b"chat", Priority.LOW)  # behind: dropped
    assert connection.dropped == 1
    connection.push_raw(b"h" * 901, Priority.HIGH)  # 2001 would pass 2000: the waiting chat goes
    assert connection.dropped == 2 and not connection.is_closed
    connection.push_raw(b"h" * 400, Priority.HIGH)  # 2101, nothing left to drop: too slow
    assert connection.is_closed
    assert await eventually(lambda: _now(socket.closed_with), timeout=5, interval=0) == CLOSE_SLOW_CONSUMER
    connection.check_slow(time.monotonic() + 60)
    await connection.finish()


async def test_the_hub_counts_its_load_as_connections_come_go_and_fall_behind() -> None:
    """GatewayLoad (what the breaker and every room flush read) is kept as things happen, not
    counted over every connection; the sweep closes the one that stayed behind."""
    from imflow.gateway.hub import Hub

    hub = Hub(None, "gw-test")  # type: ignore[arg-type]  # no Redis needed for this
    (fast, fast_sink), (slow, slow_sink) = direct_connection(), direct_connection()
    for connection in (fast, slow):
        hub.add(connection)
    hub.add(fast)  # twice is once
    slow.push_raw(b"x" * 1200)
    slow.push_raw(b"reply")
    load = hub.load()
    assert (load.connections, load.slow_connections, load.queued_frames) == (2, 1, 1)
    slow_sink.drain(10_000)
    assert hub.load().slow_connections == 0
    slow.push_raw(b"x" * 1200)
    assert slow._behind_since is not None
    slow._behind_since -= 10  # behind for 10 s now
    hub._swept = 0
    hub._sweep()
    assert slow_sink.closed_with == CLOSE_SLOW_CONSUMER and fast_sink.closed_with is None
    assert hub.load().slow_connections == 0, "closed: no longer counted as behind"
    hub.remove(slow)
    hub.remove(slow)
    assert hub.load().connections == 1


async def test_frames_before_the_session_opens_are_bounded_too() -> None:
    """Set-up may wait (a presence write-back holds the lock): what is pushed meanwhile counts
    against the same bytes, not without limit."""
    sink = FakeSink()
    connection = Connection(FakeWebSocket(sink), "viewer", LIMIT, 3.0)  # type: ignore[arg-type]
    connection.push_raw(b"x" * 1500)
    assert not connection.is_closed
    connection.push_raw(b"x" * 600)  # 2100 > 2000
    assert sink.closed_with == CLOSE_SLOW_CONSUMER


async def test_a_closed_connection_is_not_counted_behind_again() -> None:
    from imflow.gateway.hub import Hub

    hub = Hub(None, "gw-test")  # type: ignore[arg-type]
    connection, sink = direct_connection()
    hub.add(connection)
    connection.close(4008, "bye")
    connection.writing_paused()  # the close frame crossed the high-water mark
    assert hub.load().slow_connections == 0
    await connection.finish()  # nothing can drain any more: no wait
