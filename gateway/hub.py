"""The connections this gateway holds, by user, and the listener that routes frames to them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import uuid

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError

from imflow.core import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from starlette.websockets import WebSocket

log = logging.getLogger(__name__)

CLOSE_SLOW_CONSUMER = 4008


class Connection:
    """One client connection with its own bounded outbound queue and writer task.

    A client that cannot keep up never blocks the sender of a frame: when its queue is full
    the connection is closed (code 4008) and the client resyncs when it reconnects.
    """

    def __init__(self, websocket: WebSocket, user: str, queue_size: int) -> None:
        self.websocket = websocket
        self.user = user
        self.id = uuid.uuid4().hex[:16]
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(queue_size)
        self._open = asyncio.Event()  # frames queue up until the session is set up
        self._writer = asyncio.create_task(self._write())
        self.closed = asyncio.Event()

    def open(self) -> None:
        """Start sending what is queued (the welcome first): the user is reachable now."""
        self._open.set()

    def push(self, frame: dict[str, Any]) -> None:
        self.push_raw(orjson.dumps(frame))

    def push_raw(self, data: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            log.warning("closing a slow connection of %s: outbound queue full", self.user)
            self.close(CLOSE_SLOW_CONSUMER, "too slow: resync after reconnecting")

    def close(self, code: int, reason: str) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self._writer.cancel()
            asyncio.create_task(self._close_socket(code, reason))

    async def _close_socket(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason)

    async def _write(self) -> None:
        try:
            await self._open.wait()
            while (data := await self._queue.get()) is not None:
                await self.websocket.send_text(data.decode())
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket went away; the reader side notices and cleans up
            self.closed.set()

    async def finish(self) -> None:
        """Flush what is queued (briefly), then stop the writer."""
        self._open.set()
        if not self.closed.is_set():
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._writer), 1.0)
        self.closed.set()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._writer


class Hub:
    def __init__(self, redis: Redis, node: str) -> None:
        self.redis = redis
        self.node = node
        self.connections: dict[str, set[Connection]] = defaultdict(set)
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    def add(self, connection: Connection) -> None:
        self.connections[connection.user].add(connection)

    def remove(self, connection: Connection) -> None:
        held = self.connections.get(connection.user)
        if held is not None:
            held.discard(connection)
            if not held:
                del self.connections[connection.user]

    def to_user(self, user: str, frame: dict[str, Any], skip: str = "") -> None:
        self.to_users([user], frame, skip)

    def to_users(self, users: list[str], frame: dict[str, Any], skip: str = "") -> None:
        """Push one frame to every connection of these users (but ``skip``), serialised once."""
        data = None
        for user in users:
            for connection in self.connections.get(user, ()):
                if connection.id != skip:
                    data = data or orjson.dumps(frame)
                    connection.push_raw(data)

    @property
    def listening(self) -> bool:
        """Whether frames for this gateway reach it now (part of readiness)."""
        return self._subscribed.is_set()

    async def start(self) -> None:
        """Start listening; a Redis that is down now is retried in the background."""
        self._listener = asyncio.create_task(self._listen())
        with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._subscribed.wait()), 5)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _listen(self) -> None:
        """Route frames published for this gateway; resubscribe after a Redis outage."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.gateway_channel(self.node))
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._route(message["data"])
            except (RedisConnectionError, OSError) as exc:
                self._subscribed.clear()
                log.warning("gateway channel lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _route(self, data: bytes) -> None:
        try:
            for event in orjson.loads(data):
                users = event["users"] if "users" in event else [event["user"]]
                self.to_users(users, event["frame"], event.get("skip", ""))
        except Exception:
            log.exception("dropped a malformed gateway event")
