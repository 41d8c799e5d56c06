"""A user's inbox and unread counts: delivery (step 5), client ACK, read reports, sync."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import orjson

from . import keys
from .scripts import queue_script, run_pipeline, script

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from imflow.core.models import Message

    from .scripts import Reply


@dataclass(frozen=True)
class Unread:
    conversation: str
    count: int
    total: int
    read_seq: int | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"conversation": self.conversation, "count": self.count, "total": self.total}
        if self.read_seq is not None:
            out["read_seq"] = self.read_seq
        return out


def inbox_entry(message: Message) -> bytes:
    """The inbox member for a message: the same bytes on every replay, so ZADD stays idempotent."""
    return orjson.dumps(message.model_dump())


def queue_delivery(pipe: Pipeline, message: Message, member: str, inbox_limit: int, entry: bytes | None = None) -> Reply:
    """Add one member's delivery to a pipeline; read its reply with ``delivery_result``.
    ``entry``: the message's ``inbox_entry``, made once for all its members by a caller that
    delivers it to several."""
    return queue_script(
        pipe,
        "deliver",
        keys=keys.user_state_keys(member),
        args=[
            message.conversation,
            message.seq,
            message.mid,
            entry if entry is not None else inbox_entry(message),
            1 if member == message.sender else 0,
            inbox_limit,
        ],
    )


def delivery_result(message: Message, result: list[int]) -> tuple[bool, Unread]:
    """(newly delivered, the member's unread counts); False on a replay, and for a message
    recalled before it reached this member (deliver.lua adds no inbox entry for it)."""
    delivered, count, total = result
    return bool(delivered), Unread(message.conversation, int(count), int(total))


async def deliver(redis: Redis, message: Message, member: str, inbox_limit: int) -> tuple[bool, Unread]:
    """Put the message in one member's inbox and update their unread counts; False on a replay."""
    _, (result,) = await run_pipeline(redis, lambda pipe: queue_delivery(pipe, message, member, inbox_limit))
    return delivery_result(message, result)


async def mark_read(redis: Redis, user: str, conversation: str, seq: int) -> Unread:
    read, count, total = await script(redis, "read")(keys=keys.user_state_keys(user), args=[conversation, seq])
    return Unread(conversation, int(count), int(total), read_seq=int(read))


async def acknowledge(redis: Redis, user: str, mids: list[int]) -> int:
    """The client has the messages: remove them from the inbox (one script call for a page)."""
    return int(await script(redis, "ack")(keys=[keys.inbox(user)], args=mids))


async def inbox_page(
    redis: Redis, user: str, before_mid: int | None, limit: int
) -> tuple[list[orjson.Fragment], int | None, list[int]]:
    """Un-ACKed messages newest first, the cursor for the next older page (None at the end),
    and the page's mids in the same order.

    The messages stay the JSON they are stored as (orjson fragments): a page of a thousand is
    passed through, not parsed and serialised again.
    """
    upper = f"({before_mid}" if before_mid is not None else "+inf"
    found = await redis.zrevrangebyscore(keys.inbox(user), upper, "-inf", start=0, num=limit + 1, withscores=True)
    entries = cast("list[tuple[bytes, float]]", found)  # our clients answer bytes
    page = entries[:limit]
    cursor = int(page[-1][1]) if len(entries) > limit else None
    return [orjson.Fragment(entry) for entry, _ in page], cursor, [int(mid) for _, mid in page]


async def conversation_states(redis: Redis, user: str) -> tuple[list[dict], int]:
    """Per conversation the last delivered seq, read seq and unread count; and the total."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.last_seq(user))
        pipe.hgetall(keys.read_seq(user))
        pipe.hgetall(keys.unread(user))
        pipe.get(keys.unread_total(user))
        last, read, unread, total = await pipe.execute()
    states = [
        {
            "conversation": conversation.decode(),
            "last_seq": int(seq),
            "read_seq": int(read.get(conversation, 0)),
            "unread": int(unread.get(conversation, 0)),
        }
        for conversation, seq in last.items()
    ]
    states.sort(key=lambda state: state["conversation"])
    return states, int(total or 0)


async def delete_for_me(redis: Redis, user: str, mid: int) -> None:
    """Hide one message from this user only; the other side and the content stay."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.sadd(keys.deleted(user), mid)
        pipe.zremrangebyscore(keys.inbox(user), mid, mid)
        await pipe.execute()


async def deleted_among(redis: Redis, user: str, mids: list[int]) -> set[int]:
    if not mids:
        return set()
    flags = await redis.smismember(keys.deleted(user), mids)
    return {mid for mid, flag in zip(mids, flags, strict=True) if flag}
