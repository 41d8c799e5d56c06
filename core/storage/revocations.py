"""Token revocations in Redis: one time per user (Unix ms, only ever raised), and the order to
every gateway that announces a new one (core/revocation.py has the rules)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import keys
from .scripts import script

if TYPE_CHECKING:
    from redis.asyncio import Redis


async def raise_time(redis: Redis, user: str, before_ms: int) -> None:
    """Record that ``user``'s tokens issued at or before ``before_ms`` no longer count (a time
    already recorded that is later stays)."""
    await script(redis, "raise_field")(keys=[keys.token_revocation(user)], args=[keys.REVOKED_MS, before_ms])


async def announce(redis: Redis, order: bytes) -> None:
    """Publish an order to every gateway (they listen on gateway_events.orders_channel)."""
    await redis.publish(keys.gateways_channel(), order)


async def times(redis: Redis, users: list[str]) -> dict[str, int]:
    """Each given user's revocation time (Unix ms); users never revoked are left out."""
    async with redis.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.hget(keys.token_revocation(user), keys.REVOKED_MS)
        replies = await pipe.execute()
    return {user: int(reply) for user, reply in zip(users, replies, strict=True) if reply is not None}


async def time_of(redis: Redis, user: str) -> int | None:
    """``user``'s revocation time (Unix ms), or None if never revoked."""
    revoked = await redis.hget(keys.token_revocation(user), keys.REVOKED_MS)
    return int(revoked) if revoked is not None else None
