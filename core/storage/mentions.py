"""The "mentions me" records and counts (docs/protocol.md, "Mentions").

Per user, per conversation, the seqs of the messages that mention them above their read seq
(``keys.mentions``, mentions.lua); per read fan-out group, the seqs of its ``@all`` messages
(``keys.mention_all``: one record however many members). A user's count is never stored: it
is made from those seqs, their read and last seqs and the seqs recalled for them
(``count``), so a replay, a late flush or a recall cannot leave it wrong.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from . import keys
from .scripts import Reply, queue_script, run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

KEEP = 1000  # seqs kept per user and conversation (the newest): a count shows at most this
ALL_KEEP = 1000  # @all seqs kept per read fan-out group (the newest)


def seqs_of(raw: bytes | str | None) -> list[int]:
    """The seqs of a comma-separated record (empty for none)."""
    if not raw:
        return []
    text = raw.decode() if isinstance(raw, bytes) else raw
    return [int(token) for token in text.split(",") if token]


def count(read: int, last: int, own: list[int], everyone: list[int], recalled: list[int]) -> int:
    """The "mentions me" count: messages above ``read`` and up to ``last`` (what has reached the
    user) that mention them (``own``) or everyone (``everyone``), each once, without recalled ones."""
    return len({seq for seq in (*own, *everyone) if read < seq <= last} - set(recalled))


@dataclass(frozen=True)
class UserMentions:
    """What mentions.lua answers for one user and conversation."""

    read: int
    last: int
    own: list[int]
    recalled: list[int]

    @classmethod
    def of(cls, reply: list) -> UserMentions:
        read, last, own, recalled = reply
        return cls(int(read), int(last), seqs_of(own), seqs_of(recalled))

    def count(self, everyone: list[int]) -> int:
        return count(self.read, self.last, self.own, everyone, self.recalled)


def queue_record(pipe: Pipeline, user: str, conversation: str, seq: int = 0) -> Reply:
    """Record that message ``seq`` mentions ``user`` (0: record nothing, only drop what they
    have read); read the reply with ``UserMentions.of``. Idempotent."""
    return queue_script(
        pipe, "mentions",
        keys=[keys.mentions(user), keys.read_seq(user), keys.last_seq(user), keys.recalled(user)],
        args=[conversation, seq, KEEP],
    )


def queue_everyone(pipe: Pipeline, conversation: str, seq: int) -> None:
    """Record an ``@all`` message of a read fan-out group once, for all its members. Idempotent."""
    key = keys.mention_all(conversation)
    pipe.zadd(key, {str(seq): seq})
    pipe.zremrangebyrank(key, 0, -(ALL_KEEP + 1))


def queue_everyone_seqs(pipe: Pipeline, conversation: str, after: int = 0) -> Reply:
    """The group's ``@all`` seqs above ``after``; read with ``everyone_from``."""
    pipe.zrangebyscore(keys.mention_all(conversation), f"({after}", "+inf")
    return Reply(pipe, len(pipe) - 1)


def everyone_from(reply: Reply) -> list[int]:
    return [int(seq) for seq in reply.value]


async def state(redis: Redis, user: str, conversation: str, group: bool) -> int:
    """The user's count in one conversation now, dropping the mentions they have read (one
    round trip; two in a group, whose ``@all`` record lives with the conversation)."""
    _, (reply,) = await run_pipeline(redis, lambda pipe: queue_record(pipe, user, conversation))
    mine = UserMentions.of(reply)
    if not group or mine.read >= mine.last:
        return mine.count([])
    return mine.count(await everyone_between(redis, conversation, mine.read, mine.last))


async def everyone_between(redis: Redis, conversation: str, read: int, last: int) -> list[int]:
    """The seqs of ``conversation``'s ``@all`` record in (``read``, ``last``]."""
    found = cast("list[bytes]", await redis.zrangebyscore(keys.mention_all(conversation), f"({read}", last))
    return [int(seq) for seq in found]


async def counts(redis: Redis, user: str, states: list[dict]) -> dict[str, int]:
    """Each conversation's count for the sync's conversation ``states`` ({conversation,
    last_seq, read_seq, …}); conversations with none are left out. One round trip, plus one
    for the user's groups with unread messages."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.mentions(user))
        pipe.hgetall(keys.recalled(user))
        own_raw, recalled_raw = await pipe.execute()
    own = {conversation.decode(): seqs_of(raw) for conversation, raw in own_raw.items()}
    recalled = {conversation.decode(): seqs_of(raw) for conversation, raw in recalled_raw.items()}
    groups = [s for s in states if s["conversation"].startswith("g:") and s["last_seq"] > s["read_seq"]]
    everyone: dict[str, list[int]] = {}
    if groups:
        async with redis.pipeline(transaction=False) as pipe:
            for s in groups:
                pipe.zrangebyscore(keys.mention_all(s["conversation"]), f"({s['read_seq']}", s["last_seq"])
            found = await pipe.execute()
        everyone = {s["conversation"]: [int(seq) for seq in seqs] for s, seqs in zip(groups, found, strict=True)}
    out = {}
    for s in states:
        c = s["conversation"]
        n = count(s["read_seq"], s["last_seq"], own.get(c, []), everyone.get(c, []), recalled.get(c, []))
        if n:
            out[c] = n
    return out


async def drop(redis: Redis, users: list[str], conversation: str, seq: int, chunk: int = 250) -> None:
    """Take message ``seq`` out of each user's record in ``conversation`` (mention_drop.lua; a
    pipeline per ``chunk`` users, so every member of a big group is never one giant pipeline).
    Idempotent."""
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        await run_pipeline(redis, functools.partial(_queue_drops, users=part, conversation=conversation, seq=seq))


def _queue_drops(pipe: Pipeline, users: list[str], conversation: str, seq: int) -> None:
    for user in users:
        queue_script(pipe, "mention_drop", keys=[keys.mentions(user)], args=[conversation, seq])


async def record(redis: Redis, users: list[str], conversation: str, seq: int) -> None:
    """Record that message ``seq`` mentions each of ``users`` (a few: one round trip). Idempotent."""
    if users:
        await run_pipeline(redis, lambda pipe: [queue_record(pipe, user, conversation, seq) for user in users])


async def drop_everyone(redis: Redis, conversation: str, seq: int) -> bool:
    """Take ``seq`` out of a read fan-out group's ``@all`` record; whether it was there."""
    return bool(await redis.zrem(keys.mention_all(conversation), str(seq)))


async def members(redis: Redis, gid: str) -> list[str]:
    """Every member of group ``gid`` (one command)."""
    found = cast("list[bytes]", await redis.hkeys(keys.group_members(gid)))
    return sorted(member.decode() for member in found)


async def joined_seqs(redis: Redis, gid: str, users: list[str]) -> dict[str, int]:
    """Each member's seq of group ``gid`` when they joined (users not in the group left out)."""
    if not users:
        return {}
    found = await redis.hmget(keys.group_joined(gid), users)
    return {user: int(at) for user, at in zip(users, found, strict=True) if at is not None}


async def roles_of(redis: Redis, gid: str, users: list[str]) -> list[str | None]:
    """Each user's role in group ``gid`` (None: not a member), in order; one command."""
    found = await redis.hmget(keys.group_members(gid), users)
    return [role.decode() if isinstance(role, bytes) else role for role in found]


async def unread_totals(redis: Redis, users: list[str], chunk: int = 250) -> dict[str, int]:
    """Each user's unread total as stored now (a pipeline per ``chunk`` users, so a big group's
    members never make one giant pipeline)."""
    out: dict[str, int] = {}
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]
        async with redis.pipeline(transaction=False) as pipe:
            for user in part:
                pipe.get(keys.unread_total(user))
            out.update({user: int(total or 0) for user, total in zip(part, await pipe.execute(), strict=True)})
    return out
