"""Reading a conversation's log in Redis: its newest messages by seq (the ingest script writes
it; the archive keeps everything older than what it holds)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import orjson

from . import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis


async def page(redis: Redis, conversation: str, before_seq: int | None, after_seq: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` messages (dicts as stored) with ``after_seq < seq < before_seq`` (no upper
    bound for None), newest first."""
    upper = f"({before_seq}" if before_seq is not None else "+inf"
    log = keys.conversation_log(conversation)
    entries = cast("list[bytes]", await redis.zrevrangebyscore(log, upper, f"({after_seq}", start=0, num=limit))
    return [orjson.loads(entry) for entry in entries]
