"""The Redis state of groups (members, roles, join seqs, info, each user's index of groups, who
is connected) and the archive record of every membership change.

The members hash is the truth; a user's set of groups is an index written after it. Members
join through one Lua script (join_group.lua), so the actor's role and the size cap are checked
in the same step as the write, however many gateways change a group at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ..models import group_conversation
from . import archive_queue, fan_out, keys
from .redis_client import text
from .scripts import Reply, queue_script, reply, run_pipeline, script

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.typing import EncodableT

EVENTS_TABLE = "im_group_events"  # the durable record of every membership change, in the archive


@dataclass(frozen=True)
class Joined:
    """What ``join`` did: ``added`` the users who were not in the group yet (sorted), or why
    nothing was: ``actor_missing`` (the actor is not in the group), ``actor_may_not``
    (the actor is neither owner nor admin), ``full`` (the cap would be exceeded)."""

    added: list[str]
    actor_missing: bool = False
    actor_may_not: bool = False
    full: bool = False


@dataclass(frozen=True)
class GroupEntry:
    """One of a user's groups: its gid, name and the user's role in it."""

    gid: str
    name: str
    role: str


async def create_info(redis: Redis, gid: str, owner: str, name: str, at_ms: int) -> bool:
    """Claim ``gid`` for a new group (its info hash); False if the gid is taken."""
    if not await redis.hsetnx(keys.group_info(gid), "owner", owner):
        return False
    await redis.hset(keys.group_info(gid), mapping={"name": name, "created_at_ms": at_ms})
    return True


async def role_of(redis: Redis, gid: str, user: str) -> str | None:
    """The user's role in the group, None if they are not in it."""
    role = await redis.hget(keys.group_members(gid), user)
    return text(role) if role else None


async def roles(redis: Redis, gid: str) -> dict[str, str]:
    """Every member's role (empty for a group that does not exist)."""
    return {text(user): text(role) for user, role in (await redis.hgetall(keys.group_members(gid))).items()}


async def has_member(redis: Redis, gid: str, user: str) -> bool:
    return bool(await redis.hexists(keys.group_members(gid), user))


async def joined_seq(redis: Redis, gid: str, user: str) -> int:
    """The group conversation's seq when the user joined (0 if they are not in the group)."""
    return int(await redis.hget(keys.group_joined(gid), user) or 0)


async def membership(redis: Redis, gid: str, user: str) -> tuple[bool, int]:
    """(is the user a member, their join seq), read at one moment: a rejoin moves both at once."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hexists(keys.group_members(gid), user)
        pipe.hget(keys.group_joined(gid), user)
        member, joined = await pipe.execute()
    return bool(member), int(joined or 0)


async def join(redis: Redis, gid: str, wanted: dict[str, str], *, actor: str | None, max_members: int) -> Joined:
    """Add users with their roles (those already in keep theirs): they see what comes after the
    conversation's seq now, counted from there, and if connected they are pushed to from the
    next message on. With an ``actor``, only if the actor is the owner or an admin.
    """
    seq = int(await redis.get(keys.conversation_seq(group_conversation(gid))) or 0)
    pairs = [item for user in sorted(wanted) for item in (user, wanted[user])]
    status, *added = await script(redis, "join_group")(
        keys=[keys.group_members(gid), keys.group_joined(gid)], args=[max_members, seq, actor or "", *pairs]
    )
    if status:
        return Joined([], actor_missing=status == 1, actor_may_not=status == 2, full=status == 3)
    names = [user.decode() for user in added]
    if names:
        await _index(redis, gid, names, seq)
    return Joined(names)


async def _index(redis: Redis, gid: str, names: list[str], seq: int) -> None:
    """The indexes after a join: each user's set of groups, their counts, the online members."""
    nodes = await _gateways(redis, names)

    def index(pipe: Pipeline) -> None:
        for user in names:
            pipe.sadd(keys.user_groups(user), gid)  # first: advance acts for members only
            fan_out.queue_advance(pipe, user, gid, seq, seq)
        online: dict[EncodableT, EncodableT] = {f"{node}|{user}": count for user in names for node, count in nodes[user].items()}
        if online:
            pipe.hset(keys.group_online(gid), mapping=online)

    await run_pipeline(redis, index)


async def _gateways(redis: Redis, users: list[str]) -> dict[str, dict[str, int]]:
    """Each user's gateways and how many connections each holds."""
    async with redis.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.hgetall(keys.user_gateways(user))
        found = await pipe.execute()
    return {user: {node.decode(): int(count) for node, count in held.items()} for user, held in zip(users, found, strict=True)}


async def leave(redis: Redis, gid: str, user: str) -> None:
    """Take the user out of the group and drop their state of its conversation, its messages in
    their inbox too (``forget.lua``: they may not see them any more, and a later recall would
    not reach them there)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.group_members(gid), user)
        pipe.hdel(keys.group_joined(gid), user)
        await pipe.execute()
    nodes = (await _gateways(redis, [user]))[user]

    def forget(pipe: Pipeline) -> None:
        pipe.srem(keys.user_groups(user), gid)
        if nodes:
            pipe.hdel(keys.group_online(gid), *(f"{node}|{user}" for node in nodes))
        queue_script(pipe, "forget", keys=keys.user_state_keys(user), args=[group_conversation(gid)])
        pipe.hdel(keys.mentions(user), group_conversation(gid))  # their "mentions me" record of it

    await run_pipeline(redis, forget)


async def set_roles(redis: Redis, gid: str, changes: dict[str, str], owner: str | None = None) -> None:
    """Set members' roles, and with ``owner`` the group's owner, in one transaction."""
    async with redis.pipeline(transaction=True) as pipe:
        if owner is not None:
            pipe.hset(keys.group_info(gid), "owner", owner)
        pipe.hset(keys.group_members(gid), mapping=cast("dict[EncodableT, EncodableT]", changes))
        await pipe.execute()


async def groups_of(redis: Redis, user: str) -> list[GroupEntry]:
    """The user's groups by gid, with their names and the user's roles (one round trip after
    the index; a group the index still lists after a removal is left out)."""
    gids = sorted(text(gid) for gid in await redis.smembers(keys.user_groups(user)))

    def ask(pipe: Pipeline) -> dict[str, tuple[Reply, Reply]]:
        asked = {}
        for gid in gids:
            pipe.hget(keys.group_info(gid), "name")
            name = reply(pipe)
            pipe.hget(keys.group_members(gid), user)
            asked[gid] = (name, reply(pipe))
        return asked

    asked, _ = await run_pipeline(redis, ask)
    return [
        GroupEntry(gid, (name.value or b"").decode(), role.value.decode())
        for gid, (name, role) in asked.items()
        if role.value is not None
    ]


async def record(
    redis: Redis, app_id: str, partitions: int, gid: str, actor: str, kind: str, changes: dict[str, str], at_ms: int
) -> None:
    """Write membership changes (user -> role, '' for none) to the archive's EVENTS_TABLE
    (Redis holds the hot set; this is the record)."""
    rows = [
        {"gid": gid, "user": user, "kind": kind, "role": role, "actor": actor, "at_ms": at_ms} for user, role in changes.items()
    ]
    partition = archive_queue.partition_for(gid, partitions)
    await archive_queue.enqueue_rows(redis, app_id, partition, EVENTS_TABLE, rows)
