"""Which gateways are alive, and the sweep of a dead one's presence entries.

Every gateway beats (``beat``) every ``gateway_heartbeat_seconds``: its deadline in the
``gateways_alive`` sorted set moves to Redis's clock + ``gateway_liveness_ttl_seconds``. A
gateway killed with SIGKILL (or cut off) stops beating; once its deadline passes, any live
gateway claims its sweep (``sweep_dead``) and removes what names it: its fields in its users'
``user_gateways`` hashes and in their groups' ``group_online`` hashes, found through the
gateway's own index ``gateway_users`` (kept by core/storage/presence.py with the same counts). Until
then routing skips it (``presence.gateways_of`` and the send path), so no push goes to a gateway presumed dead.

A user left with no connection anywhere by a sweep is offline from the sweep's time
(``Swept.offline``: the presence service tells their contacts).

A gateway that was only paused (a stalled loop, a network cut longer than the TTL) and beats
again learns from ``beat`` that it was swept, and writes its entries again (core/storage/presence.py
``announce``). Deadlines come from Redis's ``TIME``, never a gateway's clock.
"""

from __future__ import annotations

import enum
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..ids import now_ms
from . import keys, presence  # presence imports this module too: only functions use either
from .redis_client import text
from .scripts import Reply, queue_script, run_pipeline, script

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

log = logging.getLogger(__name__)

SWEEP_CHUNK = 500  # users per pipeline of a sweep
SWEEP_LOCK_MS = 60_000  # a sweeper that dies lets go after this; the next one starts over


class Beat(enum.IntEnum):
    """What a heartbeat learnt (the reply of gateway_beat.lua)."""

    ALIVE = 0  # registered and within its deadline all along
    REGISTERED = 1  # was not registered: the first beat, or its entries were swept (write them again)
    BEING_SWEPT = 2  # presumed dead and being swept now: write the entries again once that is done


@dataclass
class Swept:
    """What the sweep of one gateway's entries did: ``users`` whose entries named it, and the
    ``offline`` changes of those left with no connection on any gateway."""

    users: int = 0
    offline: list[presence.Change] = field(default_factory=list)


async def beat(redis: Redis, node: str, ttl_seconds: float) -> Beat:
    """Push ``node``'s deadline to now + ``ttl_seconds`` (Redis's clock). Raises Redis errors."""
    answer = await script(redis, "gateway_beat")(
        keys=[keys.gateways_alive(), keys.gateway_sweeping(node)], args=[node, int(ttl_seconds * 1000)]
    )
    return Beat(int(answer))


async def forget(redis: Redis, node: str) -> None:
    """A gateway stopping cleanly leaves the registry (its connections have said goodbye)."""
    await redis.zrem(keys.gateways_alive(), node)


def queue_dead(pipe: Pipeline) -> Reply:
    """Queue the lookup of the gateways presumed dead; read its reply with ``dead_from``."""
    return queue_script(pipe, "gateways_dead", keys=[keys.gateways_alive()], args=[])


def dead_from(reply: list[bytes]) -> frozenset[str]:
    return frozenset(node.decode() for node in reply)


async def dead_gateways(redis: Redis) -> frozenset[str]:
    """The gateways whose deadline has passed (not yet swept, or swept and not forgotten)."""
    return dead_from(await script(redis, "gateways_dead")(keys=[keys.gateways_alive()], args=[]))


async def sweep_dead(redis: Redis, me: str = "", at_ms: int | None = None) -> dict[str, Swept]:
    """Sweep every gateway presumed dead (but ``me``) whose sweep no one else holds; users left
    with no connection were last seen at ``at_ms`` (default now).

    Returns node -> what its sweep did. Raises Redis errors (a sweep cut short is done again
    later: every step is idempotent).
    """
    swept = {}
    for node in sorted(await dead_gateways(redis) - {me}):
        token = uuid.uuid4().hex
        claimed = await script(redis, "gateway_claim")(
            keys=[keys.gateways_alive(), keys.gateway_sweeping(node)], args=[node, token, SWEEP_LOCK_MS]
        )
        if not claimed:
            continue
        done = await sweep_entries(redis, node, at_ms)
        forgotten = await script(redis, "gateway_swept")(
            keys=[keys.gateways_alive(), keys.gateway_sweeping(node)], args=[node, token]
        )
        log.warning(
            "gateway %s stopped beating: swept the presence entries of %d user(s), %d now offline%s",
            node, done.users, len(done.offline), "" if forgotten else "; it came back and writes them again",
        )
        swept[node] = done
    return swept


async def sweep(redis: Redis, node: str) -> int:
    """``sweep_entries`` of ``node`` now; returns the users swept."""
    return (await sweep_entries(redis, node)).users


async def sweep_entries(redis: Redis, node: str, at_ms: int | None = None) -> Swept:
    """Remove every presence entry that names ``node``: its fields in its users' gateways
    hashes, in their groups' online hashes, and its own index. Users left with no connection
    anywhere were last seen at ``at_ms`` (default now).

    Only for a gateway known not to hold connections now (presumed dead, or this process at
    its start: a gateway restarted under the same name holds nothing yet).
    """
    index, cursor, swept = keys.gateway_users(node), 0, Swept()
    at_ms = now_ms() if at_ms is None else at_ms
    while True:
        cursor, found = await redis.hscan(index, cursor, count=SWEEP_CHUNK)
        users = sorted(text(user) for user in found)
        for start in range(0, len(users), SWEEP_CHUNK):
            swept.offline += await _sweep_users(redis, node, users[start : start + SWEEP_CHUNK], at_ms)
        swept.users += len(users)
        if cursor == 0:
            return swept


async def _sweep_users(redis: Redis, node: str, users: list[str], at_ms: int) -> list[presence.Change]:
    async with redis.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.smembers(keys.user_groups(user))
        groups = await pipe.execute()

    def remove(pipe: Pipeline) -> list[Reply]:
        dropped = []
        for user, gids in zip(users, groups, strict=True):
            dropped.append(presence.queue_drop(pipe, user, node, at_ms))
            for gid in gids:
                pipe.hdel(keys.group_online(gid.decode()), f"{node}|{user}")
        pipe.hdel(keys.gateway_users(node), *users)  # last: a sweep cut short finds them again
        return dropped

    dropped, _ = await run_pipeline(redis, remove)
    return [change for user, answer in zip(users, dropped, strict=True) if (change := presence.change_from(user, answer))]
