"""Which gateways hold a user's connections, so pushes go only where the user is.

Two indexes, both counted per connection: the user's gateways (pushes to one user), and
each of their groups' connected members by gateway (a read fan-out push finds a group's
online members with one call instead of one per member).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import keys
from .scripts import queue_script, run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline


async def _groups(redis: Redis, user: str) -> list[str]:
    return sorted(gid.decode() for gid in await redis.smembers(keys.user_groups(user)))


async def connected(redis: Redis, user: str, node: str) -> None:
    gids = await _groups(redis, user)

    def count_in(pipe: Pipeline) -> None:
        pipe.hincrby(keys.user_gateways(user), node, 1)
        for gid in gids:
            pipe.hincrby(keys.group_online(gid), f"{node}|{user}", 1)

    await run_pipeline(redis, count_in)


async def disconnected(redis: Redis, user: str, node: str) -> None:
    gids = await _groups(redis, user)

    def count_out(pipe: Pipeline) -> None:
        queue_script(pipe, "lower_field", keys=[keys.user_gateways(user)], args=[node])
        for gid in gids:
            queue_script(pipe, "lower_field", keys=[keys.group_online(gid)], args=[f"{node}|{user}"])

    await run_pipeline(redis, count_out)


async def gateways_of(redis: Redis, user: str) -> list[str]:
    return [node.decode() for node in await redis.hkeys(keys.user_gateways(user))]
