"""Groups (R3): who is in a group, with which role, and who may change that.

The members hash of a group is the truth; each user's set of groups is an index written after
it. Every gateway and worker reads membership from Redis when it needs it, so a change is
visible everywhere at once. Roles: the owner (one), admins, members.

- the owner and admins add members; the owner adds admins (``set_role``);
- the owner removes anyone but themself, an admin removes plain members;
- anyone but the owner may leave (the owner hands the group over first).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .storage import archive_queue, fan_out, keys
from .errors import ErrorCode, ImflowError
from .ids import now_ms
from .models import direct_members
from .storage.scripts import queue_script, run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

OWNER, ADMIN, MEMBER = "owner", "admin", "member"
MAX_MEMBERS = 100_000
EVENTS_TABLE = "im_group_events"  # the durable record of every membership change, in the archive


async def record(redis: Redis, app_id: str, partitions: int, gid: str, actor: str, kind: str, changes: dict[str, str]) -> None:
    """Write membership changes to the archive (Redis holds the hot set; this is the record)."""
    at = now_ms()
    rows = [{"gid": gid, "user": user, "kind": kind, "role": role, "actor": actor, "at_ms": at} for user, role in changes.items()]
    partition = archive_queue.partition_for(gid, partitions)
    await archive_queue.enqueue_rows(redis, app_id, partition, EVENTS_TABLE, rows)


def group_id(conversation: str) -> str | None:
    kind, _, gid = conversation.partition(":")
    return gid if kind == "g" and gid else None


async def is_member(redis: Redis, conversation: str, user: str) -> bool:
    pair = direct_members(conversation)
    if pair is not None:
        return user in pair
    gid = group_id(conversation)
    return gid is not None and bool(await redis.hexists(keys.group_members(gid), user))


async def role_of(redis: Redis, gid: str, user: str) -> str | None:
    role = await redis.hget(keys.group_members(gid), user)
    return role.decode() if role else None


async def _require_role(redis: Redis, gid: str, user: str) -> str:
    """The user's role; a non-member learns nothing about the group, not even that it exists."""
    role = await role_of(redis, gid, user)
    if role is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no group {gid!r} for you")
    return role


async def joined_seq(redis: Redis, gid: str, user: str) -> int:
    return int(await redis.hget(keys.group_joined(gid), user) or 0)


async def members(redis: Redis, gid: str, asker: str) -> dict[str, str]:
    roles = {user.decode(): role.decode() for user, role in (await redis.hgetall(keys.group_members(gid))).items()}
    if asker not in roles:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no group {gid!r} for you")
    return roles


async def _join(redis: Redis, gid: str, users: dict[str, str]) -> None:
    """Add members: they see what comes after this seq, counted from there, and if connected
    they are pushed to from the next message on."""
    conversation = f"g:{gid}"
    seq = int(await redis.get(keys.conversation_seq(conversation)) or 0)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.group_members(gid), mapping=users)
        pipe.hset(keys.group_joined(gid), mapping={user: seq for user in users})
        await pipe.execute()
    names = sorted(users)
    nodes = await _gateways(redis, names)

    def index(pipe: Pipeline) -> None:
        for user in names:
            pipe.sadd(keys.user_groups(user), gid)  # first: advance acts for members only
            fan_out.queue_advance(pipe, user, gid, seq, seq)
        online = {f"{node}|{user}": count for user in names for node, count in nodes[user].items()}
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


async def create(redis: Redis, gid: str, owner: str, name: str, initial: list[str]) -> dict[str, str]:
    if not await redis.hsetnx(keys.group_info(gid), "owner", owner):
        raise ImflowError(ErrorCode.BAD_FRAME, f"group {gid!r} exists already")
    await redis.hset(keys.group_info(gid), mapping={"name": name, "created_at_ms": now_ms()})
    roles = {user: MEMBER for user in initial if user != owner}
    roles[owner] = OWNER
    await _join(redis, gid, roles)
    return roles


async def add(redis: Redis, gid: str, actor: str, users: list[str]) -> list[str]:
    """Add members (owner or admin); returns those who were not in the group yet."""
    role = await _require_role(redis, gid, actor)
    if role not in (OWNER, ADMIN):
        raise ImflowError(ErrorCode.FORBIDDEN, "only the owner and admins add members")
    wanted = sorted(set(users))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hlen(keys.group_members(gid))
        pipe.hmget(keys.group_members(gid), wanted)
        count, roles = await pipe.execute()
    new = [user for user, role in zip(wanted, roles, strict=True) if role is None]
    if count + len(new) > MAX_MEMBERS:
        raise ImflowError(ErrorCode.FORBIDDEN, f"a group has at most {MAX_MEMBERS} members")
    if new:
        await _join(redis, gid, {user: MEMBER for user in new})
    return new


async def remove(redis: Redis, gid: str, actor: str, user: str) -> None:
    actor_role, user_role = await _require_role(redis, gid, actor), await role_of(redis, gid, user)
    if user_role is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"{user} is not in the group")
    allowed = (actor_role == OWNER and user_role != OWNER) or (actor_role == ADMIN and user_role == MEMBER)
    if not allowed:
        raise ImflowError(ErrorCode.FORBIDDEN, f"a group's {actor_role} cannot remove its {user_role}")
    await _leave(redis, gid, user)


async def leave(redis: Redis, gid: str, user: str) -> None:
    if await _require_role(redis, gid, user) == OWNER:
        raise ImflowError(ErrorCode.FORBIDDEN, "the owner cannot leave; make someone else owner first")
    await _leave(redis, gid, user)


async def _leave(redis: Redis, gid: str, user: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.group_members(gid), user)
        pipe.hdel(keys.group_joined(gid), user)
        await pipe.execute()
    nodes = (await _gateways(redis, [user]))[user]

    def forget(pipe: Pipeline) -> None:
        pipe.srem(keys.user_groups(user), gid)
        if nodes:
            pipe.hdel(keys.group_online(gid), *(f"{node}|{user}" for node in nodes))
        queue_script(pipe, "forget", keys=keys.user_state_keys(user), args=[f"g:{gid}"])

    await run_pipeline(redis, forget)


async def set_role(redis: Redis, gid: str, actor: str, user: str, role: str) -> None:
    """The owner makes a member an admin or an admin a member, or hands ownership over."""
    if await _require_role(redis, gid, actor) != OWNER:
        raise ImflowError(ErrorCode.FORBIDDEN, "only the owner changes roles")
    if await role_of(redis, gid, user) is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"{user} is not in the group")
    if role not in (OWNER, ADMIN, MEMBER) or user == actor:
        raise ImflowError(ErrorCode.BAD_FRAME, "role must be owner, admin or member, for someone else")
    changes = {user: role}
    if role == OWNER:  # one owner: the old one becomes an admin
        changes[actor] = ADMIN
        await redis.hset(keys.group_info(gid), "owner", user)
    await redis.hset(keys.group_members(gid), mapping=changes)


async def groups_of(redis: Redis, user: str) -> list[dict[str, str]]:
    gids = sorted(gid.decode() for gid in await redis.smembers(keys.user_groups(user)))
    out = []
    for gid in gids:
        info = {k.decode(): v.decode() for k, v in (await redis.hgetall(keys.group_info(gid))).items()}
        role = await role_of(redis, gid, user)
        if role is not None:  # the index may lag a removal by a moment
            out.append({"gid": gid, "conversation": f"g:{gid}", "name": info.get("name", ""), "role": role})
    return out


async def may_see(redis: Redis, conversation: str, user: str, seq: int) -> bool:
    """May ``user`` see message ``seq`` (>= 1) of ``conversation`` (``p:…`` or ``g:…``)?

    The one rule history follows, for every read of per-message state (plugins' too): in a
    one-to-one conversation its two users see everything; in a group, a member sees the messages
    sent after they joined (seq above their join seq; joining again starts over), a non-member
    nothing. One round trip to Redis; raises ``redis.RedisError`` when Redis fails.
    """
    pair = direct_members(conversation)
    if pair is not None:
        return user in pair
    gid = group_id(conversation)
    if gid is None:
        return False
    async with redis.pipeline(transaction=True) as pipe:  # one moment: a rejoin moves both at once
        pipe.hexists(keys.group_members(gid), user)
        pipe.hget(keys.group_joined(gid), user)
        member, joined = await pipe.execute()
    return bool(member) and seq > int(joined or 0)
