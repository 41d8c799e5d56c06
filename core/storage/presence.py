"""Which gateways hold a user's connections, so pushes go only where the user is.

Three indexes, all counted per connection: the user's gateways (pushes to one user), each of
their groups' connected members by gateway (a read fan-out push finds a group's online
members with one call instead of one per member), and each gateway's users (where the sweep
of a dead gateway finds the other two's entries: core/storage/gateway_liveness.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import gateway_liveness, keys
from .redis_client import text
from .scripts import Reply, queue_script, reply, run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline


async def _groups(redis: Redis, user: str) -> list[str]:
    return sorted(text(gid) for gid in await redis.smembers(keys.user_groups(user)))


async def connected(redis: Redis, user: str, node: str) -> None:
    gids = await _groups(redis, user)

    def count_in(pipe: Pipeline) -> None:
        pipe.hincrby(keys.user_gateways(user), node, 1)
        pipe.hincrby(keys.gateway_users(node), user, 1)
        for gid in gids:
            pipe.hincrby(keys.group_online(gid), f"{node}|{user}", 1)

    await run_pipeline(redis, count_in)


async def disconnected(redis: Redis, user: str, node: str) -> None:
    gids = await _groups(redis, user)

    def count_out(pipe: Pipeline) -> None:
        queue_script(pipe, "lower_field", keys=[keys.user_gateways(user)], args=[node])
        queue_script(pipe, "lower_field", keys=[keys.gateway_users(node)], args=[user])
        for gid in gids:
            queue_script(pipe, "lower_field", keys=[keys.group_online(gid)], args=[f"{node}|{user}"])

    await run_pipeline(redis, count_out)


async def gateways_of(redis: Redis, user: str) -> list[str]:
    """The gateways holding the user's connections, but those presumed dead (not swept yet)."""
    def look_up(pipe: Pipeline) -> tuple[Reply, Reply]:
        return queue_gateways_of(pipe, user), gateway_liveness.queue_dead(pipe)

    (held, dead), _ = await run_pipeline(redis, look_up)
    return gateways_from(held.value, gateway_liveness.dead_from(dead.value))


def queue_gateways_of(pipe: Pipeline, user: str) -> Reply:
    """Queue the lookup of the gateways holding ``user``'s connections (read with ``gateways_from``)."""
    pipe.hkeys(keys.user_gateways(user))
    return reply(pipe)


def gateways_from(fields: list[bytes], dead: frozenset[str] = frozenset()) -> list[str]:
    """The gateways of a ``queue_gateways_of`` reply, but those in ``dead``."""
    if not dead:
        return [text(field) for field in fields]
    return [node for node in map(text, fields) if node not in dead]


async def announce(redis: Redis, node: str, held: dict[str, int]) -> None:
    """Write again every entry of the connections ``node`` holds (user -> connections), as a
    gateway does after a sweep took them while it was presumed dead. Counts are set, not added."""
    users = sorted(held)
    for start in range(0, len(users), gateway_liveness.SWEEP_CHUNK):
        chunk = users[start : start + gateway_liveness.SWEEP_CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for user in chunk:
                pipe.smembers(keys.user_groups(user))
            groups = await pipe.execute()
        async with redis.pipeline(transaction=False) as pipe:
            for user, gids in zip(chunk, groups, strict=True):
                pipe.hset(keys.user_gateways(user), node, held[user])
                pipe.hset(keys.gateway_users(node), user, held[user])
                for gid in gids:
                    pipe.hset(keys.group_online(gid.decode()), f"{node}|{user}", held[user])
            await pipe.execute()
