"""Frames that are never stored: pushed to the members of a conversation who are connected now,
at a priority a gateway may drop them at (a typing notice).

Nothing is written: a member who is offline, or whose connection is behind, simply misses the
frame, and nothing replays it. One lookup of who is online (core/storage/online.py) and one
publish per gateway holding any of them.

A big group's lookup costs Redis time in proportion to its members online (~6 ms for 5,000),
so this process keeps the answer of a group with ``CACHE_FROM`` or more members online for
``ONLINE_TTL_S`` (one lookup per group and second, however many type; lookups made at once
share one), for at most ``CACHE_GROUPS`` groups. The price: for up to that second a member who
has just connected misses a notice, and one who has just left may get one. Smaller groups
and one-to-one conversations are looked up every time, exactly.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from .models import group_id
from .plugin_types import Priority
from .storage import gateway_events, online

if TYPE_CHECKING:
    from redis.asyncio import Redis

ONLINE_TTL_S = 1.0  # how long a big group's members online are reused
CACHE_FROM = 64  # members online from which a group's lookup is reused
CACHE_GROUPS = 1_024  # groups whose lookup this process keeps at most (per Redis client)
_CACHE = "_imflow_online_cache"  # on the Redis client, as its send-check batch: one per client and loop

Online = tuple[dict[str, list[str]], frozenset[str]]  # gateway -> its members online, sorted; all of them


async def _look_up(redis: Redis, conversation: str) -> Online:
    by_node = {node: sorted(set(users)) for node, users in (await online.members_online(redis, conversation)).items()}
    return by_node, frozenset(user for users in by_node.values() for user in users)


def _cache(redis: Redis) -> dict[str, tuple[float, asyncio.Future[Online]]]:
    return redis.__dict__.setdefault(_CACHE, {})


def _keep_at_most(cache: dict[str, tuple[float, asyncio.Future[Online]]], most: int, now: float) -> None:
    """Drop the expired entries, then the oldest, until at most ``most`` are left."""
    if len(cache) <= most:
        return
    for conversation in [c for c, (expires, _) in cache.items() if expires <= now]:
        del cache[conversation]
    while len(cache) > most:
        del cache[next(iter(cache))]  # insertion order: the oldest first


async def members_online(redis: Redis, conversation: str) -> Online:
    """``online.members_online`` (each gateway's list sorted, and the set of all), reused for a
    second in a group with many members online (module docstring). Raises ``redis.RedisError``
    when Redis fails (nothing is kept then)."""
    if group_id(conversation) is None:
        return await _look_up(redis, conversation)
    cache = _cache(redis)
    now = time.monotonic()
    hit = cache.get(conversation)
    if hit is not None and hit[0] > now:
        return await asyncio.shield(hit[1])
    lookup = asyncio.ensure_future(_look_up(redis, conversation))
    lookup.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved, even if nobody waits
    cache[conversation] = (now + ONLINE_TTL_S, lookup)
    _keep_at_most(cache, CACHE_GROUPS, now)
    try:
        found = await asyncio.shield(lookup)
    except BaseException:
        if cache.get(conversation, (0.0, None))[1] is lookup:
            del cache[conversation]
        raise
    if len(found[1]) < CACHE_FROM and cache.get(conversation, (0.0, None))[1] is lookup:
        del cache[conversation]  # cheap to look up again, and exact
    return found


async def push_to_online_members(
    redis: Redis, conversation: str, frame: dict[str, Any], *, skip_user: str = "", priority: Priority = Priority.LOW,
) -> int:
    """Push ``frame`` (a plugin's own frame, sent as built) to every connection of the members of
    ``conversation`` (``p:…`` or ``g:…``) connected now, but those of ``skip_user`` (the one whose
    action it reports). ``priority`` defaults to ``Priority.LOW``: a connection that is behind
    drops it before anything else, and never closes for it. A group with many members online is
    looked up at most once a second per process (module docstring).

    Returns how many members it went to (one per member, however many devices); 0 for an id that
    names no conversation. Membership is not checked here: check it first (``is_member``).
    Raises ``redis.RedisError`` when Redis fails.
    """
    nodes, everyone = await members_online(redis, conversation)
    by_node = {node: targets for node, users in nodes.items() if (targets := [user for user in users if user != skip_user])}
    await gateway_events.frame_to_gateways(redis, by_node, frame, int(priority))
    return len(everyone) - (skip_user in everyone)
