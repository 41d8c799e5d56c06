"""Which gateways hold a user's connections, so pushes go only where the user is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis


async def connected(redis: Redis, user: str, node: str) -> None:
    await redis.hincrby(keys.user_gateways(user), node, 1)


async def disconnected(redis: Redis, user: str, node: str) -> None:
    key = keys.user_gateways(user)
    if await redis.hincrby(key, node, -1) <= 0:
        await redis.hdel(key, node)


async def gateways_of(redis: Redis, user: str) -> list[str]:
    return [node.decode() for node in await redis.hkeys(keys.user_gateways(user))]
