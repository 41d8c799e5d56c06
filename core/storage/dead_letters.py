"""Which records were already set aside on the dead-letter topic (core/dead_letter.py), by the
sha256 digest of their bytes, so a replay does not set one aside twice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis


async def was_set_aside(redis: Redis, app_id: str, digest: str) -> bool:
    return bool(await redis.exists(keys.dead_letter_seen(app_id, digest)))


async def mark_set_aside(redis: Redis, app_id: str, digest: str, ttl_s: int) -> None:
    """Remember the record for ``ttl_s`` seconds."""
    await redis.set(keys.dead_letter_seen(app_id, digest), 1, ex=ttl_s)
