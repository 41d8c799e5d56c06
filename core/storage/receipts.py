"""Read positions as others see them: a read report that says whether it moved the read seq (for
the one-to-one ``receipt`` push), peers' read seqs for sync, members' read seqs and the senders of
seqs for the ``receipts`` and ``readers`` operations (core/receipts.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import orjson

from . import keys
from .inbox import Unread
from .mentions import UserMentions, queue_record
from .scripts import queue_script, reply, run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from .archive import ArchiveReader


@dataclass(frozen=True)
class ReadMove:
    """A read report's outcome: the read seq ``before`` it, the counts after (read.lua), and the
    user's mention record there with what they have read dropped (mentions.lua)."""

    before: int
    unread: Unread
    mentions: UserMentions

    @property
    def moved(self) -> bool:
        return self.unread.read_seq is not None and self.unread.read_seq > self.before


async def mark_read(redis: Redis, user: str, conversation: str, seq: int) -> ReadMove:
    """Move ``user``'s read seq in ``conversation`` up to ``seq`` (never back, never past the
    last delivered seq: read.lua) and drop the mentions that read covers; one round trip.
    Two reports at once may both see the seq move (a second ``receipt`` push of the same seq)."""

    def read(pipe: Pipeline) -> tuple:
        pipe.hget(keys.read_seq(user), conversation)
        before = reply(pipe)
        after = queue_script(pipe, "read", keys=keys.user_state_keys(user), args=[conversation, seq])
        return before, after, queue_record(pipe, user, conversation)

    (before, after, mentions), _ = await run_pipeline(redis, read)
    read_seq, count, total = after.value
    unread = Unread(conversation, int(count), int(total), read_seq=int(read_seq))
    return ReadMove(int(before.value or 0), unread, UserMentions.of(mentions.value))


async def read_seqs(redis: Redis, users: list[str], conversation: str) -> dict[str, int]:
    """Each user's read seq in ``conversation`` (0: none); one round trip."""
    if not users:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.hget(keys.read_seq(user), conversation)
        found = await pipe.execute()
    return {user: int(seq or 0) for user, seq in zip(users, found, strict=True)}


async def peer_read_seqs(redis: Redis, peers: dict[str, str]) -> dict[str, int]:
    """For one-to-one conversations (conversation -> the other user), the other user's read seq
    there; one round trip."""
    if not peers:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for conversation, peer in peers.items():
            pipe.hget(keys.read_seq(peer), conversation)
        found = await pipe.execute()
    return {conversation: int(seq or 0) for conversation, seq in zip(peers, found, strict=True)}


@dataclass(frozen=True)
class GroupAudience:
    """A group as receipts see it: ``count`` members; below ``list_below`` also each member's
    join seq (they see the messages after it), else None."""

    count: int
    joined: dict[str, int] | None


async def group_audience(redis: Redis, gid: str, list_below: int) -> GroupAudience:
    """The members of group ``gid`` and their join seqs, if fewer than ``list_below``."""
    count = int(await redis.hlen(keys.group_members(gid)))
    if count >= list_below:
        return GroupAudience(count, None)
    async with redis.pipeline(transaction=True) as pipe:  # both hashes at one moment
        pipe.hkeys(keys.group_members(gid))
        pipe.hgetall(keys.group_joined(gid))
        members, joined = await pipe.execute()
    seqs = {user.decode(): int(seq) for user, seq in joined.items()}
    return GroupAudience(len(members), {member.decode(): seqs.get(member.decode(), 0) for member in members})


async def senders(redis: Redis, conversation: str, seqs: list[int]) -> tuple[dict[int, str], int]:
    """The sender of each of ``seqs`` the conversation's Redis log still holds (older ones are
    the archive's), and the conversation's last seq (a seq above it does not exist); one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for seq in seqs:
            pipe.zrangebyscore(keys.conversation_log(conversation), seq, seq)
        pipe.get(keys.conversation_seq(conversation))
        *found, last = await pipe.execute()
    entries = cast("list[list[bytes]]", found)
    return {seq: orjson.loads(hits[0])["sender"] for seq, hits in zip(seqs, entries, strict=True) if hits}, int(last or 0)


_ARCHIVED_SENDERS = """
SELECT seq, any_value(sender) FROM im_msg_content
WHERE conversation = $conversation AND seq BETWEEN $low AND $high AND seq IN ({seqs})
GROUP BY seq
"""


def archived_senders(archive: ArchiveReader, conversation: str, seqs: list[int]) -> dict[int, str]:
    """The sender of each of ``seqs`` the archive holds (a blocking DuckDB query: run it in a
    thread); one query however many seqs (the BETWEEN bounds let the lake skip other row
    groups). Raises duckdb.Error when the lake cannot be read."""
    if not seqs:
        return {}
    listed = ", ".join(str(int(seq)) for seq in seqs)  # integers: literals are safe
    rows = archive.cursor().execute(
        _ARCHIVED_SENDERS.format(seqs=listed), {"conversation": conversation, "low": min(seqs), "high": max(seqs)}
    ).fetchall()
    return {int(seq): str(sender) for seq, sender in rows}
