"""Red packets (R15), a built-in plugin written only against the hook API.

A ``red_packet`` message carries ``total_cents``, ``count`` and an optional ``greeting``.
Members of the conversation who may see the packet's message grab shares (``red_packet.grab``)
and read its state (``red_packet.status``): the same rule as history (``groups.may_see``), so a
member who joined a group after the packet was sent neither sees nor grabs it. The split is computed in
Redis by one Lua script (double-average method: every share at least 1 cent, the shares add
up to the total exactly, nobody grabs twice, nothing is overdrawn however many gateways
grab at once). What is not grabbed when the packet expires (24 h by default) is refunded by
a timer. Every packet, grab and refund goes to the archive tables ``red_packets`` and
``red_packet_events``.

Settings: ``IMFLOW_RED_PACKETS_TTL_SECONDS``, ``IMFLOW_RED_PACKETS_MAX_TOTAL_CENTS``,
``IMFLOW_RED_PACKETS_MAX_COUNT``, read when a plugin manager builds its ``RedPackets`` object.
"""

from __future__ import annotations

import random
from importlib import resources
from typing import Annotated, Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imflow.plugin_api import (
    AgentContext,
    MessageBody,
    MessageType,
    Operation,
    OperationContext,
    OperationError,
    Rejection,
    SendCommand,
    TimerSpec,
    enqueue_rows,
    hookimpl,
    may_see,
    now_ms,
    partition_for,
    register_script,
    script,
)

TYPE = "red_packet"
EXPIRIES = "rp:expiries"  # sorted set mid -> expires_at_ms, for the refund timer
PACKETS_TABLE = "red_packets"
EVENTS_TABLE = "red_packet_events"
SCRIPTS = {name: f"red_packet_{name}" for name in ("grab", "open", "refund")}  # file -> registered name


def lua_source(name: str) -> str:
    """The source of this plugin's script ``name`` (``grab``, ``open``, ``refund``)."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


for name in SCRIPTS:  # loaded the one way, like imflow's own (storage.scripts)
    register_script(SCRIPTS[name], lua_source(name))


class RedPacketSettings(BaseSettings):
    """The plugin's settings (``IMFLOW_RED_PACKETS_…``), shown by ``imflow config``."""

    model_config = SettingsConfigDict(env_prefix="IMFLOW_RED_PACKETS_", env_file=".env", extra="ignore")

    ttl_seconds: int = Field(86_400, gt=0, description="How long a packet can be grabbed before the rest is refunded")
    max_total_cents: int = Field(20_000, gt=0, description="Largest amount one packet may hold, in cents")
    max_count: int = Field(1_000, gt=0, description="Most shares one packet may be split into")


def packet_key(mid: int) -> str:
    return f"rp:{{{mid}}}:packet"


def grabs_key(mid: int) -> str:
    return f"rp:{{{mid}}}:grabs"


class RedPacketBody(MessageBody):
    """The body of a ``red_packet`` message, declared once (the amounts' policy is checked in
    imflow_before_send, where settings apply): ``total_cents`` and ``count`` are integers within
    the protocol's 0...2^53-1, ``greeting`` at most 100 characters."""

    total_cents: int
    count: int
    greeting: Annotated[str, Field(max_length=100)] = ""


def amount_problem(total: int, count: int, settings: RedPacketSettings) -> Rejection | None:
    """Why a packet of ``total`` cents in ``count`` shares may not be sent under ``settings``, or None."""
    if total <= 0 or count <= 0:
        return Rejection("red_packet.bad_amount", "amount and count must be positive")
    if count > settings.max_count:
        return Rejection("red_packet.bad_amount", f"at most {settings.max_count} shares")
    if count > total:
        return Rejection("red_packet.bad_amount", "every share needs at least 1 cent: count must not exceed the amount in cents")
    if total > settings.max_total_cents:
        return Rejection("red_packet.too_large", f"at most {settings.max_total_cents} cents per packet")
    return None


def _partition(mid: int, settings_: Any) -> int:
    return partition_for(mid, settings_.topic_partitions)


def _request(frame: dict[str, Any]) -> tuple[str, int]:
    conversation, mid = frame.get("conversation"), frame.get("mid")
    if not isinstance(conversation, str) or not isinstance(mid, int) or isinstance(mid, bool) or not 0 <= mid < 1 << 53:
        raise OperationError("red_packet.bad_request", "give the conversation and the packet's mid")
    return conversation, mid


async def _visible_packet(redis: Any, conversation: str, mid: int, user: str) -> dict[str, str] | None:
    """The packet's hash if it is in ``conversation`` and ``user`` may see its message, else None."""
    packet = {k.decode(): v.decode() for k, v in (await redis.hgetall(packet_key(mid))).items()}
    if packet.get("conversation") != conversation:
        return None
    # a packet opened before seqs were kept counts as its conversation's first message
    return packet if await may_see(redis, conversation, user, int(packet.get("seq", 1))) else None


async def grab(context: OperationContext, frame: dict[str, Any]) -> dict[str, Any]:
    """``red_packet.grab``: a share of the packet for the asking member, or an OperationError."""
    conversation, mid = _request(frame)
    redis = context.redis
    if await _visible_packet(redis, conversation, mid, context.user) is None:
        # a non-member, or a member who joined after it was sent: the one rule of visibility
        # (groups.may_see, as history and status), so nobody learns that it exists
        raise OperationError("red_packet.not_found", "no such red packet in this conversation")
    at = now_ms()
    status, share, cents_left, count_left = await script(redis, SCRIPTS["grab"])(
        keys=[packet_key(mid), grabs_key(mid)], args=[context.user, at, random.random()]
    )
    if status == -1:
        raise OperationError("red_packet.not_found", "no such red packet in this conversation")
    if status == -2:
        raise OperationError("red_packet.expired", "this red packet has expired")
    if status == -3:
        raise OperationError("red_packet.already_grabbed", f"you already grabbed {share} cents")
    if status == -4:
        raise OperationError("red_packet.empty", "all shares are taken")
    event = {"mid": mid, "kind": "grab", "user": context.user, "cents": int(share), "at_ms": at}
    await enqueue_rows(redis, context.settings.app_id, _partition(mid, context.settings), EVENTS_TABLE, [event])
    return {"mid": mid, "share_cents": int(share), "cents_left": int(cents_left), "count_left": int(count_left)}


async def status(context: OperationContext, frame: dict[str, Any]) -> dict[str, Any]:
    """``red_packet.status``: the packet's totals and grabs, to whoever may see its message."""
    conversation, mid = _request(frame)
    packet = await _visible_packet(context.redis, conversation, mid, context.user)
    if packet is None:  # a non-member or a late member learns nothing, not even that it exists
        raise OperationError("red_packet.not_found", "no such red packet in this conversation")
    grabs = {user.decode(): int(cents) for user, cents in (await context.redis.hgetall(grabs_key(mid))).items()}
    numbers = ("total", "count", "cents_left", "count_left", "expires_at", "refunded")
    return {"mid": mid, "sender": packet["sender"], **{k: int(packet[k]) for k in numbers}, "grabs": grabs}


async def refund_expired(context: AgentContext) -> None:
    """The refund timer: close expired packets (any worker; the script refunds once)."""
    at = now_ms()
    for member in await context.redis.zrangebyscore(EXPIRIES, 0, at, start=0, num=500):
        mid = int(member)
        refunded = await script(context.redis, SCRIPTS["refund"])(keys=[packet_key(mid)], args=[at])
        if refunded > 0:
            event = {"mid": mid, "kind": "refund", "user": "", "cents": int(refunded), "at_ms": at}
            s = context.settings
            await enqueue_rows(context.redis, s.app_id, _partition(mid, s), EVENTS_TABLE, [event])
        if refunded != -1:
            await context.redis.zrem(EXPIRIES, mid)


class RedPackets:
    """The plugin object: one per plugin manager, with the settings read when it was built."""

    def __init__(self) -> None:
        self.settings = RedPacketSettings()

    @hookimpl
    def imflow_settings(self) -> RedPacketSettings:
        return self.settings

    @hookimpl
    def imflow_message_types(self) -> list[MessageType]:
        return [MessageType(TYPE, schema=RedPacketBody)]

    @hookimpl
    def imflow_client_operations(self) -> list[Operation]:
        return [Operation("red_packet.grab", grab), Operation("red_packet.status", status)]

    @hookimpl
    def imflow_stream_agents(self) -> list[TimerSpec]:
        return [TimerSpec("red_packet.refund", lambda s: 1.0, refund_expired)]

    @hookimpl
    def imflow_before_send(self, command: SendCommand) -> Rejection | None:
        if command.type != TYPE:
            return None
        return amount_problem(command.body["total_cents"], command.body["count"], self.settings)

    @hookimpl
    async def imflow_after_persist(self, messages: list[Any], context: AgentContext) -> None:
        """Open each new packet (idempotent: a replay finds it open) and put it in the ledger."""
        for message in messages:
            if message.type != TYPE:
                continue
            expires = message.sent_at_ms + self.settings.ttl_seconds * 1000
            body = message.body
            await script(context.redis, SCRIPTS["open"])(
                keys=[packet_key(message.mid)],
                args=[body["total_cents"], body["count"], message.sender, message.conversation, expires, message.seq],
            )
            await context.redis.zadd(EXPIRIES, {message.mid: expires}, nx=True)
            # written on every replay too (a crash may have come between opening and this):
            # the row is the same each time, and the archive view keeps one
            row = {"mid": message.mid, "conversation": message.conversation, "sender": message.sender,
                   "total_cents": body["total_cents"], "count": body["count"], "greeting": body["greeting"],
                   "expires_at_ms": expires}
            s = context.settings
            await enqueue_rows(context.redis, s.app_id, _partition(message.mid, s), PACKETS_TABLE, [row])
