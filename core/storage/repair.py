"""``imflow repair unread``: rebuild unread counts from seqs and read positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import fan_out, keys
from .scripts import script

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis


@dataclass(frozen=True)
class UnreadRepair:
    user: str
    conversations_fixed: int
    old_total: int
    new_total: int


async def users_with_state(redis: Redis) -> AsyncIterator[str]:
    """Every user with delivery state (SCAN, so a big keyspace is never blocked)."""
    pattern = keys.last_seq("*")  # im:{u:*}:last
    async for key in redis.scan_iter(match=pattern, count=1000):
        name = key.decode()
        yield name[name.index("{u:") + 3 : name.index("}")]


async def repair_user(redis: Redis, user: str) -> UnreadRepair:
    await fan_out.catch_up(redis, user)  # read fan-out groups first: their seqs are the truth
    fixed, old, new = await script(redis, "repair_unread")(keys=keys.user_state_keys(user), args=[])
    return UnreadRepair(user, int(fixed), int(old), int(new))
