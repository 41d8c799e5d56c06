"""The connections this gateway holds, by user, and the listener that routes frames to them
(a ``presence`` change only to the connections watching its user)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from imflow.core import presence, revocation
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.ids import now_ms
from imflow.core.plugin_types import GatewayLoad, PreparedFrame, Priority
from imflow.core.revocation import Revocation
from imflow.core.settings import Settings

from . import frames
from .websocket_protocol import direct_sink, frame_wire

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from redis.asyncio import Redis
    from starlette.websockets import WebSocket

    from imflow.core.tokens import TokenClaims

log = logging.getLogger(__name__)

CLOSE_SLOW_CONSUMER = 4008
CLOSE_UNAUTHENTICATED = 4401  # the token was refused, has expired or was revoked
PRESENCE_BATCH = 1000  # connects and disconnects written together at most
REVOCATION_MEMORY_S = 60.0  # how long a gateway remembers a revocation for connections still signing in
DROPPED_FRAMES = Counter("imflow_dropped_frames", "Low-priority frames dropped because a client fell behind")
SLOW_CLOSES = Counter("imflow_slow_connections_closed", "Connections closed (4008) for staying too slow")
SESSIONS_ENDED = Counter("imflow_sessions_ended", "Sessions ended by their token (4401)", ["code"])
REAUTHENTICATIONS = Counter("imflow_reauthentications", "Sessions given a fresh token on their open socket")
LOOP_LAG = Gauge("imflow_gateway_loop_lag_ms", "How late the gateway's event loop runs timers")
HEARTBEAT_S = Settings.model_fields["gateway_heartbeat_seconds"].default
LIVENESS_TTL_S = Settings.model_fields["gateway_liveness_ttl_seconds"].default


class Connection:
    """One client connection and the way frames reach it, bounded by bytes and time.

    Frames are written straight to the socket (a DirectSink, gateway/websocket_protocol.py: no
    task, no copy per connection) while its send buffer has room. Once ``buffer_bytes`` wait
    beyond what the kernel holds, the connection is *behind*: low-priority frames (live-room
    chat) are dropped, the others wait here in order and go out as the buffer drains. A
    connection behind for ``slow_seconds``, or with more than twice ``buffer_bytes`` waiting, is
    closed with 4008 and resyncs when it reconnects; one that is slow for a moment only misses
    some chat. Under a server without the direct path (another ASGI server), a writer task sends
    what waits through ASGI, and the same rules count the bytes it holds.
    """

    def __init__(
        self, websocket: WebSocket, user: str, buffer_bytes: int = 512 * 1024, slow_seconds: float = 3.0, kernel_buffer: int = 0,
    ) -> None:
        self.websocket = websocket
        self.user = user
        self.id = uuid.uuid4().hex[:16]
        self.buffer_bytes = buffer_bytes
        self.slow_seconds = slow_seconds
        # made when first needed (an empty deque costs 600 bytes, times every idle connection)
        self._waiting: deque[tuple[Priority, PreparedFrame | None]] | None = None  # None in it: the writer's last
        self._waiting_bytes = 0
        self._opened = False  # frames wait until the session is set up (the welcome first)
        self._behind_since: float | None = None  # monotonic s
        self._held_at_sweep = 0  # bytes waiting at the last check_slow: less now means it reads
        self.dropped = 0
        self._closed = False
        self.claims: TokenClaims | None = None  # the token this session runs on
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None  # finish() waits on it
        self.watching: set[str] = set()  # users whose presence this connection watches (their contacts)
        self.behind: set[Connection] | None = None  # the hub's connections that are behind, once added
        self._sink = direct_sink(getattr(websocket, "scope", {}))
        self._ready: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        if self._sink is not None:
            self._sink.listen(self, buffer_bytes, kernel_buffer)
        else:
            self._ready = asyncio.Event()
            self._writer = asyncio.create_task(self._write())

    @property
    def is_closed(self) -> bool:
        """Whether the session has ended (nothing more is pushed or served)."""
        return self._closed

    @property
    def queued(self) -> int:
        """Frames waiting in the gateway (not yet handed to the socket)."""
        return len(self._waiting) if self._waiting else 0

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for this client in the gateway: in its socket's buffer and here."""
        return self._waiting_bytes + (self._sink.buffered() if self._sink is not None else 0)

    @property
    def slow(self) -> bool:
        """Behind: more than ``buffer_bytes`` wait for it."""
        return self._behind_since is not None

    def authorize(self, claims: TokenClaims) -> None:
        """Run this session on ``claims`` (the first token, or a fresh one of a re-authentication,
        which replaces the expiry): at its expiry the session ends (token_expired, 4401)."""
        if self.claims is not None:
            REAUTHENTICATIONS.inc()
        self.claims = claims
        self._schedule_expiry()

    def watch(self, users: Iterable[str], limit: int) -> set[str]:
        """Watch these users' presence too; returns those not watched before (so a refusal
        can ``unwatch`` them again). Raises ImflowError ``forbidden`` past ``limit`` users in
        all, watching none of them then."""
        new = set(users) - self.watching
        if len(self.watching) + len(new) > limit:
            raise ImflowError(ErrorCode.FORBIDDEN, f"a connection watches the presence of at most {limit} users")
        self.watching |= new
        return new

    def unwatch(self, users: Iterable[str]) -> None:
        """Stop watching these users' presence (those not watched are ignored)."""
        self.watching.difference_update(users)

    @property
    def expired(self) -> bool:
        return self.claims is not None and now_ms() >= self.claims.expires_ms

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self.claims is not None and not self._closed:
            delay = max(0.0, (self.claims.expires_ms - now_ms()) / 1000)
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expiry_due)

    def _expiry_due(self) -> None:
        if not self.check_expiry():
            self._schedule_expiry()  # the loop's monotonic clock ran ahead of the wall clock a little

    def check_expiry(self) -> bool:
        """End the session if its token has expired; True if it has (then nothing more is served)."""
        if self.expired:
            self.end(ImflowError(ErrorCode.TOKEN_EXPIRED, "your token expired; connect again with a new one"))
            return True
        return False

    def revoked_by(self, revoked: Revocation) -> bool:
        """End the session if this revocation covers its token; True if it did."""
        if self.claims is None or self.user != revoked.user or not revoked.covers(self.claims.issued_ms):
            return False
        if revoked.code == ErrorCode.USER_DEACTIVATED:
            self.end(ImflowError(ErrorCode.USER_DEACTIVATED, "your account was deactivated"))
        else:
            self.end(ImflowError(ErrorCode.TOKEN_REVOKED, "your token was revoked; sign in again"))
        return True

    def end(self, error: ImflowError, code: int = CLOSE_UNAUTHENTICATED) -> None:
        """End the session: ``error`` is the last frame it gets, then the socket closes with
        ``code``. Frames still waiting are dropped (the client syncs when it comes back)."""
        if not self._closed:
            SESSIONS_ENDED.labels(str(error.code)).inc()
            self._shut(code, str(error.code), frames.error(error))

    def open(self) -> None:
        """Start sending what waits (the welcome first): the user is reachable now."""
        self._opened = True
        if self._sink is not None:
            self.writing_resumed()
        elif self._ready is not None:
            self._ready.set()

    def push(self, frame: dict[str, Any], priority: Priority = Priority.NORMAL) -> None:
        """Push one frame (serialised here)."""
        self.push_raw(orjson.dumps(frame), priority)

    def push_raw(self, data: bytes | PreparedFrame, priority: Priority = Priority.NORMAL) -> None:
        """Push a serialised frame; a PreparedFrame pushed to many connections is framed once."""
        if self._closed:
            return
        frame = data if isinstance(data, PreparedFrame) else PreparedFrame(data)
        sink = self._sink
        if sink is not None and self._opened and not self._waiting and not sink.paused:
            sink.write_frame(frame_wire(frame))  # the usual case: straight to the socket
            return
        if self._opened and self._behind_since is not None and priority == Priority.LOW:
            return self._drop()
        # the same bound before the session is open (set-up may wait on a presence write-back);
        # one frame alone always goes (a sync page may be bigger than the buffer)
        while self._waiting_bytes and self.queued_bytes + len(frame.data) > 2 * self.buffer_bytes:
            if not self._evict_low():
                return self._too_slow(f"more than {2 * self.buffer_bytes} bytes waited")
        if self._waiting is None:
            self._waiting = deque()
        self._waiting.append((priority, frame))
        self._waiting_bytes += len(frame.data)
        if self._ready is not None:  # the ASGI writer: behind once its bytes pass the mark
            if self._behind_since is None and self._waiting_bytes > self.buffer_bytes:
                self._fell_behind()
            self._ready.set()

    def writing_paused(self) -> None:
        """The socket's buffer passed ``buffer_bytes``: behind from now (called by the sink)."""
        if self._behind_since is None and not self._closed:
            self._fell_behind()

    def writing_resumed(self) -> None:
        """The socket's buffer drained (called by the sink): write what waits, as far as it takes."""
        sink = self._sink
        if sink is None or not self._opened or self._closed:
            return
        while self._waiting and not sink.paused:
            _, frame = self._waiting.popleft()
            if frame is not None:
                self._waiting_bytes -= len(frame.data)
                sink.write_frame(frame_wire(frame))
        if not self._waiting and not sink.paused:
            self._caught_up()
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    def _fell_behind(self) -> None:
        self._behind_since = time.monotonic()
        if self.behind is not None:
            self.behind.add(self)

    def _caught_up(self) -> None:
        self._behind_since = None
        if self.behind is not None:
            self.behind.discard(self)

    def _evict_low(self) -> bool:
        for index, (queued, frame) in enumerate(self._waiting or ()):
            if queued == Priority.LOW and frame is not None:
                del self._waiting[index]  # type: ignore[union-attr]
                self._waiting_bytes -= len(frame.data)
                self._drop()
                return True
        return False

    def check_slow(self, now: float) -> None:
        """Close the connection if it has been behind for too long without reading (swept
        regularly, so it happens even when nothing new is pushed to it). Fewer bytes waiting
        than at the last sweep means the client reads, only slowly (a big ``sync`` page on a
        slow link): its clock starts again, and only twice the buffer would close it."""
        if self._behind_since is None or self._closed:
            return
        held = self.queued_bytes
        if held < self._held_at_sweep:
            self._behind_since = now
        self._held_at_sweep = held
        if now - self._behind_since > self.slow_seconds:
            self._too_slow(f"behind for more than {self.slow_seconds} s without reading")

    def _drop(self) -> None:
        self.dropped += 1
        DROPPED_FRAMES.inc()

    def _too_slow(self, why: str) -> None:
        log.warning("closing a slow connection of %s: %s", self.user, why)
        SLOW_CLOSES.inc()
        self.close(CLOSE_SLOW_CONSUMER, "too slow: resync after reconnecting")

    def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` now; what waits for it is dropped."""
        if not self._closed:
            self._shut(code, reason)

    def _shut(self, code: int, reason: str, last: dict[str, Any] | None = None) -> None:
        self._closed = True
        self._waiting = None
        self._waiting_bytes = 0
        self._caught_up()  # nothing waits any more
        if self._sink is not None:
            wire = frame_wire(PreparedFrame(orjson.dumps(last))) if last is not None else None
            self._sink.close_now(code, reason, wire)
            return
        if self._writer is not None:
            self._writer.cancel()
        self._closing = asyncio.create_task(self._close_socket(code, reason, last))

    async def _close_socket(self, code: int, reason: str, last: dict[str, Any] | None = None) -> None:
        with contextlib.suppress(Exception):
            if last is not None:
                await asyncio.wait_for(self.websocket.send_text(orjson.dumps(last).decode()), 1.0)
            await self.websocket.close(code, reason)

    async def _write(self) -> None:
        """The ASGI writer (servers without the direct path): sends what waits, in order."""
        assert self._ready is not None
        try:
            while True:
                while not (self._opened and self._waiting):
                    self._ready.clear()
                    await self._ready.wait()
                assert self._waiting is not None
                _, frame = self._waiting.popleft()
                if frame is None:
                    return
                self._waiting_bytes -= len(frame.data)
                if self._behind_since is not None and self._waiting_bytes <= self.buffer_bytes // 2:
                    self._caught_up()
                await self.websocket.send_text(frame.data.decode())
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket went away; the reader side notices and cleans up
            self._closed = True

    async def finish(self) -> None:
        """Flush what waits (for a second at most), then let the connection go."""
        self._opened = True
        if not self._closed:
            if self._sink is not None:
                self.writing_resumed()
                if self._waiting and not self._sink.gone:  # else nothing will drain it
                    self._drained = asyncio.get_running_loop().create_future()
                    with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                        await asyncio.wait_for(self._drained, 1.0)
            elif self._writer is not None and self._ready is not None:
                self._waiting = self._waiting or deque()
                self._waiting.append((Priority.HIGH, None))
                self._ready.set()
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(self._writer), 1.0)
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
        if self._closing is not None:  # the last frame and the close code go out before the socket is let go
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._closing), 2.0)


class LoopLag:
    """How late the event loop runs a timer: the gateway's own measure of being overloaded."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.lag_ms = 0.0
        self.on_tick: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._measure())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            late = (loop.time() - start - self.interval) * 1000
            self.lag_ms = max(late, self.lag_ms * 0.8)  # rises at once, falls off gently
            LOOP_LAG.set(self.lag_ms)
            if self.on_tick is not None:
                self.on_tick()


class Hub:
    def __init__(
        self, redis: Redis, node: str,
        heartbeat_seconds: float = HEARTBEAT_S, liveness_ttl_seconds: float = LIVENESS_TTL_S,
    ) -> None:
        self.redis = redis
        self.node = node
        self.heartbeat_seconds = heartbeat_seconds  # settings gateway_heartbeat_seconds
        self.liveness_ttl_seconds = liveness_ttl_seconds  # settings gateway_liveness_ttl_seconds
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None
        # held around every change of this gateway's presence entries, so a write-back after
        # being swept never overwrites a connect or disconnect that happened meanwhile
        self.presence_lock = asyncio.Lock()
        # users whose connect or disconnect could not be recorded (Redis out): the next beat
        # sets their count on this gateway to what it holds (a retry of the change itself could
        # count twice, if only its reply was lost)
        self.presence_unsure: set[str] = set()
        self.connections: dict[str, set[Connection]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self.lag = LoopLag()
        self.lag.on_tick = self._sweep
        self._swept = 0.0
        # revocations heard lately, for connections that checked their token before one came
        # and joined the hub after it: user -> (revocation, when heard, monotonic s)
        self._revocations: dict[str, tuple[Revocation, float]] = {}
        self._rechecks: set[asyncio.Task[None]] = set()
        self.held = 0  # connections in ``connections``
        # connects and disconnects waiting to be written, each with the future of its session
        self._presence_queue: list[tuple[str, bool, asyncio.Future[None]]] = []
        self._presence_writer: asyncio.Task[None] | None = None
        self.behind: set[Connection] = set()  # those behind (kept by each Connection): what load() and the sweep look at

    def add(self, connection: Connection) -> None:
        held = self.connections[connection.user]
        if connection not in held:
            held.add(connection)
            self.held += 1
        connection.behind = self.behind
        if connection.slow:
            self.behind.add(connection)
        heard = self._revocations.get(connection.user)
        if heard is not None:
            connection.revoked_by(heard[0])

    def remove(self, connection: Connection) -> None:
        held = self.connections.get(connection.user)
        if held is not None and connection in held:
            held.discard(connection)
            self.held -= 1
            if not held:
                del self.connections[connection.user]
        self.behind.discard(connection)
        connection.behind = None

    async def record_presence(self, user: str, came: bool) -> None:
        """Record that a connection of ``user`` came (True) or went (False). Changes that come
        while a write is under way go together in the next one, a few round trips however many
        (10,000 viewers dropping at once, then coming back): one at a time, each holding the
        presence lock, they took minutes. Raises what the write raised (Redis is out)."""
        done = asyncio.get_running_loop().create_future()
        self._presence_queue.append((user, came, done))
        if self._presence_writer is None or self._presence_writer.done():
            self._presence_writer = asyncio.create_task(self._write_presence())
        await done

    async def _write_presence(self) -> None:
        batch: list[tuple[str, bool, asyncio.Future[None]]] = []
        try:
            while self._presence_queue:
                batch = self._presence_queue[:PRESENCE_BATCH]
                del self._presence_queue[:PRESENCE_BATCH]
                try:
                    async with self.presence_lock:  # not in the middle of a write-back
                        await presence.changed(self.redis, self.node, [(user, came) for user, came, _ in batch])
                except Exception as exc:
                    for *_, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for *_, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:  # stopped (the hub stops): nobody may wait for a write that will not come
            for *_, done in batch + self._presence_queue:
                if not done.done():
                    done.cancel()

    def _sweep(self) -> None:
        """Twice a second: close connections that stayed behind too long; forget old revocations."""
        now = time.monotonic()
        if now - self._swept >= 0.5:
            self._swept = now
            for connection in list(self.behind):
                connection.check_slow(now)
            for user, (_, heard) in list(self._revocations.items()):
                if now - heard > REVOCATION_MEMORY_S:
                    del self._revocations[user]

    def revoke(self, revoked: Revocation) -> int:
        """End the sessions of ``revoked.user`` whose tokens it covers; how many ended."""
        latest = self._revocations.get(revoked.user)
        if latest is None or latest[0].before_ms <= revoked.before_ms:
            self._revocations[revoked.user] = (revoked, time.monotonic())
        ended = sum(connection.revoked_by(revoked) for connection in list(self.connections.get(revoked.user, ())))
        if ended:
            log.info("ended %d session(s) of %s: their tokens were revoked", ended, revoked.user)
        return ended

    async def _recheck_revocations(self) -> None:
        """After the gateways channel was lost a while: look up every held user's revocation, as
        one may have been published meanwhile."""
        users = list(self.connections)
        for start in range(0, len(users), 500):
            try:
                found = await revocation.revoked_before(self.redis, users[start : start + 500])
            except Exception as exc:  # the next resubscription tries again
                log.warning("could not recheck revocations (%s)", exc)
                return
            for user, before_ms in found.items():
                self.revoke(Revocation(user, before_ms))

    def load(self) -> GatewayLoad:
        """Counted as connections come, go and fall behind: a live room asks at every flush."""
        return GatewayLoad(
            connections=self.held,
            queued_frames=sum(c.queued for c in self.behind),  # only those behind have frames waiting
            slow_connections=len(self.behind),
            loop_lag_ms=self.lag.lag_ms,
        )

    def to_users(
        self, users: list[str], frame: dict[str, Any], skip: str = "", only: str = "", priority: Priority = Priority.NORMAL,
    ) -> None:
        """Push one frame to every connection of these users (but ``skip``; or to the connection
        ``only`` alone), serialised and framed once, at ``priority`` (LOW: dropped first)."""
        prepared = None
        for user in users:
            for connection in self.connections.get(user, ()):
                if connection.id != skip and (not only or connection.id == only):
                    prepared = prepared or PreparedFrame(orjson.dumps(frame))
                    connection.push_raw(prepared, priority)

    def to_watchers(self, users: list[str], notification: dict[str, Any]) -> None:
        """A ``presence`` notification (as it travels) to the connections of these users that
        watch the users it is about, each with the states it watches."""
        states = notification["users"]
        for user in users:
            for connection in self.connections.get(user, ()):
                watched = [state for state in states if state["user"] in connection.watching]
                if watched:
                    connection.push(frames.push({**notification, "users": watched}))

    @property
    def listening(self) -> bool:
        """Whether frames for this gateway reach it now (part of readiness)."""
        return self._subscribed.is_set()

    async def start(self) -> None:
        """Start listening and beating; a Redis that is down now is retried in the background."""
        self.lag.start()
        self._listener = asyncio.create_task(self._listen())
        # entries under our name now are a former process's (same node name): gone before the
        # first connection comes; with Redis out, the heartbeat does it when Redis is back
        clean = False
        try:
            async with asyncio.timeout(5):
                await presence.sweep_own(self.redis, self.node)
                clean = True
        except Exception as exc:
            log.warning("could not clear this gateway's former entries yet (%s)", exc)
        self._heartbeat_task = asyncio.create_task(self._heartbeat(clean))
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._subscribed.wait()), 5)

    async def stop(self) -> None:
        await self.lag.stop()
        for task in list(self._rechecks):
            task.cancel()
        tasks: tuple[asyncio.Task[None] | None, ...] = (
            self._listener, self._heartbeat_task, self._sweeping, self._presence_writer,
        )
        for running in tasks:
            if running is not None:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        # the sessions have said goodbye; whatever is left names a gateway that is gone (if
        # Redis is out now, the others sweep it once our deadline passes)
        try:
            async with asyncio.timeout(2):
                await presence.sweep_own(self.redis, self.node)
                await presence.leave(self.redis, self.node)
        except Exception as exc:
            log.warning("could not leave the gateway registry (%s); live gateways will sweep our entries", exc)

    async def _sweep_dead(self) -> None:
        try:
            await presence.sweep_dead(self.redis, self.node)
        except Exception as exc:  # the next beat tries again
            log.warning("sweeping dead gateways failed (%s); retrying at a later beat", exc)

    def _held(self) -> dict[str, int]:
        """User -> connections held now."""
        return {user: len(held) for user, held in self.connections.items() if held}

    async def _heartbeat(self, clean: bool = True) -> None:
        """Tell Redis this gateway lives every ``heartbeat_seconds``; sweep the presence entries of
        gateways that stopped beating; write ours again if we were presumed dead and swept.
        ``clean``: a former process's entries under our name are gone already."""
        start = not clean
        rewrite = False  # swept while presumed dead: our entries must be written again
        beating_since: float | None = None
        failing = False
        while True:
            try:
                if start:
                    await presence.sweep_own(self.redis, self.node)
                    start, rewrite = False, True  # connections taken meanwhile are written back
                state = await presence.beat(self.redis, self.node, self.liveness_ttl_seconds)
                if state == presence.Beat.BEING_SWEPT:
                    rewrite = True  # once the sweeper is done, or it would take them again
                elif state == presence.Beat.REGISTERED or rewrite:
                    rewrite = True  # stays set until the write-back has succeeded
                    async with self.presence_lock:  # no connect or disconnect changes counts meanwhile
                        held = self._held()
                        if state == presence.Beat.REGISTERED and beating_since is not None:
                            log.warning("this gateway was presumed dead and swept; writing back %d user(s)", len(held))
                        await presence.write_back(self.redis, self.node, held)
                    rewrite = False
                    self.presence_unsure.clear()
                elif self.presence_unsure:
                    async with self.presence_lock:
                        unsure = set(self.presence_unsure)
                        held = {user: len(self.connections.get(user, ())) for user in unsure}
                        await presence.write_back(self.redis, self.node, held)
                        self.presence_unsure -= unsure
                now = time.monotonic()
                if failing:
                    log.info("gateway heartbeat resumed")
                    failing = False
                beating_since = beating_since or now
                # sweep others only after beating for a TTL: after a Redis outage every deadline
                # has passed, and the live gateways need one beat to push theirs on again
                if now - beating_since >= self.liveness_ttl_seconds and (self._sweeping is None or self._sweeping.done()):
                    # in a task of its own: a long sweep must not stop our own beat (we would be
                    # presumed dead and swept in turn)
                    self._sweeping = asyncio.create_task(self._sweep_dead())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis is out: beat again later; never let the task die
                beating_since = None
                if not failing:
                    log.warning("gateway heartbeat failed (%s); retrying", exc)
                    failing = True
            await asyncio.sleep(self.heartbeat_seconds)

    async def _listen(self) -> None:
        """Route frames published for this gateway, and orders for all gateways; resubscribe
        after a Redis outage, or when the slot of our (sharded) channel moved to another node of
        a Redis Cluster."""
        own, orders = presence.listens_on(self.node)
        everyone, mine = orders.encode(), own.encode()
        lost = False
        while True:
            pubsub = None
            try:
                pubsub = await presence.subscribe(self.redis, self.node)
                self._subscribed.set()
                if lost:  # orders published while we were away are gone: look the state up
                    lost = False
                    task = asyncio.create_task(self._recheck_revocations())
                    self._rechecks.add(task)
                    task.add_done_callback(self._rechecks.discard)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind == "sunsubscribe" and message["channel"] == mine:  # the slot moved
                        raise RedisConnectionError(f"{own} now lives on another node")
                    if kind not in ("message", "smessage"):  # (s)subscribe confirmations
                        continue
                    if message["channel"] == everyone:
                        self._order(message["data"])
                    else:
                        self._route(message["data"])
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                lost = True
                self._subscribed.clear()
                log.warning("gateway channel lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()

    def _order(self, data: bytes) -> None:
        try:
            self.revoke(Revocation.decode(data))
        except Exception:
            log.exception("dropped a malformed order for all gateways")

    def _route(self, data: bytes) -> None:
        try:
            events = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.exception("dropped a malformed batch of gateway events")
            return
        for event in events:  # one bad event costs only itself
            try:
                users = event["users"] if "users" in event else [event["user"]]
                if event.get("push", {}).get("kind") == presence.PresenceChanged.kind:
                    self.to_watchers(users, event["push"])
                    continue
                frame = frames.push(event["push"]) if "push" in event else event["frame"]
                # an event may say how much it matters (a typing notice: LOW, dropped first)
                priority = Priority(event["priority"]) if "priority" in event else Priority.NORMAL
                self.to_users(users, frame, event.get("skip", ""), event.get("only", ""), priority)
            except Exception:
                log.exception("dropped a malformed gateway event")
