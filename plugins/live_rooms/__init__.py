"""Live rooms (R13): a room's messages reach every viewer through the gateways, never through Redis.

A post goes on the ``rooms`` broadcast stream (Kafka in production, the in-process transport
embedded), which every gateway reads whole. Each gateway keeps its own room → connections
registry, gathers a room's messages for ``IMFLOW_ROOMS_BATCH_MS`` and pushes them as one
``room.batch`` frame, serialised once for all its viewers of the room. No inbox, no unread,
no per-viewer Redis write. The viewer count is approximate: each gateway writes how many
viewers it holds and when (a hash field per gateway, refreshed every few seconds), and the
count is the sum of the fields refreshed in the last 30 s (a stopped gateway's drops out).

Ordinary chat goes out at low priority (sampled or dropped under load, see the throttling
plugin); gifts, red packets and the host's own messages at high priority (never dropped).

Operations: ``room.open`` (become the room's host), ``room.join``, ``room.leave``,
``room.post`` {room, text, kind: chat|gift|red_packet}, ``room.info``.
Settings: ``IMFLOW_ROOMS_BATCH_MS`` (100), ``IMFLOW_ROOMS_MAX_TEXT`` (500).
Each plugin manager builds its own ``LiveRooms`` object: its settings and its gateways' room
registries are its own, and its shutdown hook stops the flushers it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter, Histogram
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imflow.plugin_api import (
    BroadcastStream,
    GatewayContext,
    Operation,
    OperationContext,
    OperationError,
    Outbound,
    PreparedFrame,
    Priority,
    Rejection,
    Services,
    hookimpl,
)

log = logging.getLogger(__name__)
STREAM = "rooms"
ROOM_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
KINDS = {"chat": Priority.LOW, "gift": Priority.HIGH, "red_packet": Priority.HIGH}
VIEWERS_TTL_S = 30  # a gateway's count expires this long after its last refresh
REFRESH_S = 5
WRITE_CHUNK = 500  # viewers written before the loop serves others: ~4 ms of socket writes
HOST_TTL_S = 6 * 3600  # a room's host holds it for a show's length; opening it again renews


class RoomSettings(BaseSettings):
    """The plugin's settings (``IMFLOW_ROOMS_…``), shown by ``imflow config``."""

    model_config = SettingsConfigDict(env_prefix="IMFLOW_ROOMS_", env_file=".env", extra="ignore")
    batch_ms: int = Field(100, description="How long a gateway gathers a room's messages into one room.batch frame (ms)")
    max_text: int = Field(500, description="Longest room post, in characters")


DELIVERED = Counter("imflow_room_messages_delivered", "Room messages pushed to viewers (messages x viewers)")
BATCH_DELAY = Histogram("imflow_room_batch_delay_seconds", "From a room post to its batch going out",
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2))


def viewers_key(room: str) -> str:
    return f"im:room:{{{room}}}:viewers"


def host_key(room: str) -> str:
    return f"im:room:{{{room}}}:host"


@dataclass
class Gateway:
    """One gateway's rooms: who watches what here, and what waits to go out."""

    context: GatewayContext
    settings: RoomSettings
    rooms: dict[str, set[Outbound]] = field(default_factory=lambda: defaultdict(set))
    waiting: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    flusher: asyncio.Task[None] | None = None
    refreshed: float = 0.0
    left: set[str] = field(default_factory=set)  # rooms that viewers left since the last flush

    def start(self) -> None:
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        # on a fixed beat, not a pause after each flush: writing a batch to 10,000 viewers takes
        # tens of ms, which would otherwise stretch every interval and so every message's wait
        loop = asyncio.get_running_loop()
        interval = self.settings.batch_ms / 1000
        due = loop.time()
        while True:
            due += interval
            late = loop.time() - due
            if late < 0:
                await asyncio.sleep(-late)
            else:
                if late > interval:
                    due = loop.time()  # fell a whole beat behind (a stalled loop): no burst to catch up
                await asyncio.sleep(0)  # the loop serves others between two flushes all the same
            try:
                await self.flush()
                if time.monotonic() - self.refreshed > REFRESH_S:
                    self.refreshed = time.monotonic()  # only a report of every room counts as the refresh
                    self.left.clear()
                    await self.report_viewers(list(self.rooms))
                elif self.left:
                    left, self.left = list(self.left), set()
                    await self.report_viewers(left)
            except Exception:
                log.exception("live rooms: a flush failed; the next one goes on")

    async def flush(self) -> None:
        """One frame per room with what arrived since the last flush, to every viewer here."""
        waiting, self.waiting = self.waiting, defaultdict(list)
        load = self.context.load()
        for room, messages in waiting.items():
            viewers = self.rooms.get(room)
            if not viewers:
                continue
            shaped = await self.context.hooks.call.shape_broadcast(stream=STREAM, key=room, messages=messages, load=load)
            chosen = messages if shaped is None else shaped
            now = time.time() * 1000
            for message in chosen:
                BATCH_DELAY.observe(max(0.0, now - message["at_ms"]) / 1000)
            # high-priority messages in a frame of their own, so overload drops only chat
            for priority in (Priority.HIGH, Priority.LOW):
                part = [m for m in chosen if (m["priority"] >= Priority.HIGH) == (priority == Priority.HIGH)]
                if part:
                    # serialised and framed once per batch: every viewer is sent the same bytes
                    frame = PreparedFrame(orjson.dumps({"op": "room.batch", "room": room, "messages": part}))
                    audience = list(viewers)
                    for start in range(0, len(audience), WRITE_CHUNK):
                        for connection in audience[start : start + WRITE_CHUNK]:
                            connection.push_raw(frame, priority)
                        if start + WRITE_CHUNK < len(audience):
                            await asyncio.sleep(0)  # others' requests and pings between the chunks
                    DELIVERED.inc(len(part) * len(audience))

    async def report_viewers(self, rooms: list[str]) -> None:
        """Write this gateway's viewer count of each room (and forget rooms it has none in)."""
        redis, node = self.context.redis, self.context.node
        now = int(time.time())
        async with redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                count = len(self.rooms.get(room, ()))
                if count:  # "count:when": a count not refreshed for VIEWERS_TTL_S is a stopped gateway's
                    pipe.hset(viewers_key(room), node, f"{count}:{now}")
                    pipe.expire(viewers_key(room), VIEWERS_TTL_S)
                else:
                    pipe.hdel(viewers_key(room), node)
                    self.rooms.pop(room, None)
            await pipe.execute()

    def leave_all(self, connection: Outbound) -> list[str]:
        left = [room for room, viewers in self.rooms.items() if connection in viewers]
        for room in left:
            self.rooms[room].discard(connection)
        return left

    async def stop(self) -> None:
        """Stop the flusher (what waits is dropped: rooms have no history)."""
        if self.flusher is not None:
            self.flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.flusher


def _room(fields: dict[str, Any]) -> str:
    room = fields.get("room")
    if not isinstance(room, str) or not ROOM_ID.fullmatch(room):
        raise OperationError("room.bad_request", "room: 1-64 letters, digits, '_', '.', '-'")
    return room


async def viewers(context: OperationContext, room: str) -> int:
    """The sum of the counts gateways reported in the last VIEWERS_TTL_S seconds."""
    now, total = time.time(), 0
    for value in await context.redis.hvals(viewers_key(room)):
        count, _, when = value.decode().partition(":")
        if when and now - int(when) <= VIEWERS_TTL_S:
            total += int(count)
    return total


class LiveRooms:
    """The plugin object, one per plugin manager: its settings and, per gateway node it serves
    (a test process may run several), that gateway's rooms."""

    def __init__(self) -> None:
        self.settings = RoomSettings()
        self.gateways: dict[str, Gateway] = {}  # by node

    def _gateway(self, context: OperationContext | GatewayContext) -> Gateway:
        gateway_context = context.gateway if isinstance(context, OperationContext) else context
        if gateway_context is None:
            raise OperationError("room.unavailable", "live rooms need a running gateway")
        gateway = self.gateways.get(gateway_context.node)
        if gateway is None or gateway.context is not gateway_context:
            gateway = self.gateways[gateway_context.node] = Gateway(gateway_context, self.settings)
        return gateway

    async def open_room(self, context: OperationContext, fields: dict[str, Any]) -> dict[str, Any]:
        """``room.open``: the asking user hosts the room (``room.taken`` if someone does)."""
        room = _room(fields)
        await context.redis.set(host_key(room), context.user, nx=True, ex=HOST_TTL_S)
        host = (await context.redis.get(host_key(room)) or b"").decode()
        if host != context.user:
            raise OperationError("room.taken", f"room {room} has a host already")
        return {"room": room, "host": host}

    async def join(self, context: OperationContext, fields: dict[str, Any]) -> dict[str, Any]:
        """``room.join``: the connection becomes a viewer of the room on this gateway."""
        room = _room(fields)
        gateway = self._gateway(context)
        assert context.connection is not None
        gateway.rooms[room].add(context.connection)
        gateway.start()
        await gateway.report_viewers([room])
        host = await context.redis.get(host_key(room))
        return {"room": room, "viewers": await viewers(context, room), "host": host.decode() if host else None}

    async def leave(self, context: OperationContext, fields: dict[str, Any]) -> dict[str, Any]:
        """``room.leave``: the connection stops viewing the room."""
        room = _room(fields)
        gateway = self._gateway(context)
        gateway.rooms.get(room, set()).discard(context.connection)
        await gateway.report_viewers([room])
        return {"room": room}

    async def post(self, context: OperationContext, fields: dict[str, Any]) -> dict[str, Any]:
        """``room.post``: put a viewer's message on the rooms stream, once the throttles admit it."""
        room = _room(fields)
        kind = fields.get("kind", "chat")
        text = fields.get("text", "")
        max_text = self.settings.max_text
        if not isinstance(kind, str) or kind not in KINDS or not isinstance(text, str) or not text or len(text) > max_text:
            raise OperationError("room.bad_request", f"kind one of {sorted(KINDS)}, text 1-{max_text} characters")
        gateway = self._gateway(context)
        if context.connection is None or context.connection not in gateway.rooms.get(room, ()):
            raise OperationError("room.not_joined", f"join room {room} before posting to it")
        host = await context.redis.get(host_key(room))
        priority = Priority.HIGH if host and host.decode() == context.user else KINDS[kind]
        verdict = await gateway.context.hooks.call.admit_broadcast(
            stream=STREAM, key=room, user=context.user, priority=priority, gateway=gateway.context
        )
        if isinstance(verdict, Rejection):
            raise verdict.error()
        message = {"id": uuid.uuid4().hex[:16], "room": room, "sender": context.user, "kind": kind, "text": text,
                   "priority": int(priority), "at_ms": int(time.time() * 1000)}
        await gateway.context.broadcast(STREAM, room.encode(), orjson.dumps(message))
        return {"room": room, "id": message["id"]}

    async def info(self, context: OperationContext, fields: dict[str, Any]) -> dict[str, Any]:
        """``room.info``: the room's approximate viewer count and its host."""
        room = _room(fields)
        host = await context.redis.get(host_key(room))
        return {"room": room, "viewers": await viewers(context, room), "host": host.decode() if host else None}

    async def on_records(self, context: GatewayContext, values: list[bytes]) -> None:
        """Every gateway: keep the messages of rooms it has viewers in, for the next flush."""
        gateway = self._gateway(context)
        for value in values:
            try:
                message = orjson.loads(value)
                room = message["room"]
            except Exception:
                log.warning("live rooms: skipped a malformed record")
                continue
            if gateway.rooms.get(room):
                gateway.waiting[room].append(message)

    @hookimpl
    def imflow_settings(self) -> RoomSettings:
        return self.settings

    @hookimpl
    def imflow_client_operations(self) -> list[Operation]:
        return [Operation("room.open", self.open_room), Operation("room.join", self.join), Operation("room.leave", self.leave),
                Operation("room.post", self.post), Operation("room.info", self.info)]

    @hookimpl
    def imflow_broadcast_streams(self) -> list[BroadcastStream]:
        return [BroadcastStream(STREAM, self.on_records)]

    @hookimpl
    async def imflow_on_disconnect(self, node: str, connection: Outbound) -> None:
        gateway = self.gateways.get(node)
        if gateway is not None:
            # counted at the next flush, for all who left meanwhile: when 10,000 viewers drop at
            # once (a network blip, a gateway shutting down) that is one Redis write, not 10,000
            gateway.left.update(gateway.leave_all(connection))

    @hookimpl
    async def imflow_shutdown(self, services: Services) -> None:
        """Stop the flusher of this node's gateway (a worker has none)."""
        gateway = self.gateways.pop(services.node, None)
        if gateway is not None:
            await gateway.stop()
