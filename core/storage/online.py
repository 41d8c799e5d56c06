"""The members of a conversation connected now, by gateway: where a push that is never stored
(a typing notice) goes. One round trip, whatever the conversation's size, but Redis time in
proportion to a group's members online (~6 ms for 5,000): core/ephemeral.py reuses a big group's answer."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from ..models import direct_members, group_id
from . import keys, presence
from .fan_out import online_by_gateway
from .scripts import script

if TYPE_CHECKING:
    from redis.asyncio import Redis


async def members_online(redis: Redis, conversation: str) -> dict[str, list[str]]:
    """Gateway -> the members of ``conversation`` it holds connections of, now.

    A one-to-one conversation: its two users' gateways (those presumed dead left out). A group:
    its online index (``group_online``, kept as members connect and disconnect), checked
    against the members hash so that someone who has just left is never pushed to. Anything
    else: nobody. Raises ``redis.RedisError`` when Redis fails.
    """
    pair = direct_members(conversation)
    if pair is not None:
        out: dict[str, list[str]] = defaultdict(list)
        for user, nodes in (await presence.gateways_by_user(redis, sorted(set(pair)))).items():
            for node in nodes:
                out[node].append(user)
        return dict(out)
    gid = group_id(conversation)
    if gid is None:
        return {}
    fields = await script(redis, "online_members")(keys=[keys.group_online(gid), keys.group_members(gid)], args=[])
    return dict(online_by_gateway(fields))
