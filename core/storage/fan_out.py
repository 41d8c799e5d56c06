"""Write and read fan-out of group messages (R9, R10), and group unread counts (R11, R12).

Write fan-out puts every message into each member's inbox and moves their unread count at
once: cheap for small groups, a Redis write per member per message for big ones. Read
fan-out stores a group message once (the conversation log and one archive row) and pushes it
to the members connected now, one record per gateway. Per member, only seqs move: a member's
``last`` seq for the conversation is raised to the group's newest read fan-out seq by a flush
every few seconds, or at once when the member syncs or reads, and unread = last - read.

Both modes keep one read position, one unread count per conversation and one total per user,
so the client protocol is the same and a group may switch mode between any two messages:
a message is in the inboxes (write) or only in the log (read), never both or neither, and
every count is *set* from seqs, so replays, late flushes and restarts cannot double count.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import orjson

from ..models import group_conversation, group_id
from . import keys, locks
from .redis_client import text
from .scripts import Reply, queue_script, run_pipeline, script

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from ..models import Message

Mode = Literal["write", "read"]
MODES: tuple[Mode, ...] = ("write", "read")
FLUSH_CHUNK = 250  # members per pipeline in a flush: neither Redis nor the worker's loop stalls on one group


def default_mode(members: int, threshold: int) -> Mode:
    return "read" if members >= threshold else "write"


@dataclass(frozen=True)
class GroupView:
    """A group as one batch sees it: size, members (listed only below the listing size), and
    which of the batch's senders are members."""

    count: int
    members: list[str] | None
    senders: frozenset[str]


def queue_group_view(pipe: Pipeline, gid: str, list_below: int, senders: list[str]) -> Reply:
    """Queue the look at group ``gid`` for a batch (read the reply with ``group_view``)."""
    return queue_script(pipe, "group_view", keys=[keys.group_members(gid)], args=[list_below, *senders])


def group_view(result: list, list_below: int, senders: list[str]) -> GroupView:
    count, members, flags = result
    listed = [member.decode() for member in members] if int(count) < list_below else None
    return GroupView(int(count), sorted(listed) if listed is not None else None,
                     frozenset(sender for sender, flag in zip(senders, flags, strict=True) if flag))


def queue_advance(pipe: Pipeline, user: str, gid: str, seq: int, read_at_least: int) -> None:
    """Bring a member of group ``gid`` up to ``seq`` (advance.lua; nothing if no longer a member)."""
    queue_script(pipe, "advance", keys=[*keys.user_state_keys(user), keys.user_groups(user)],
                 args=[group_conversation(gid), seq, read_at_least, gid])


@dataclass(frozen=True)
class StoredReplies:
    """Handles on the replies of ``queue_stored``."""

    raised: Reply  # the group's read fan-out mark: 0 on a replay
    online: Reply  # the members connected now, as ``gateway|user`` fields

    def result(self) -> tuple[bool, dict[str, list[str]]]:
        """(first time stored: a replay raised no mark and pushes nothing again, the members
        connected now by gateway)."""
        return bool(self.raised.value), online_by_gateway(self.online.value)


def queue_stored(pipe: Pipeline, message: Message, gid: str) -> StoredReplies:
    """The per-message Redis work of read fan-out, whatever the group's size: raise the group's
    read fan-out mark and the pending flush, bring the sender up to their own message, and list
    the members connected now."""
    conversation, seq = message.conversation, message.seq
    raised = queue_script(pipe, "raise_field", keys=[keys.group_info(gid)], args=[keys.READ_UPTO, seq])
    queue_script(pipe, "raise_field", keys=[keys.fan_out_pending()], args=[conversation, seq])
    queue_advance(pipe, message.sender, gid, seq, seq)
    online = queue_script(pipe, "online_members", keys=[keys.group_online(gid), keys.group_members(gid)], args=[])
    return StoredReplies(raised, online)


async def members_of(redis: Redis, gids: list[str]) -> dict[str, list[str]]:
    """Every member of each group, sorted (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        for gid in gids:
            pipe.hkeys(keys.group_members(gid))
        found = await pipe.execute()
    return {gid: sorted(member.decode() for member in members) for gid, members in zip(gids, found, strict=True)}


def online_by_gateway(fields: list[bytes]) -> dict[str, list[str]]:
    """``gateway|user`` fields -> the users each gateway holds."""
    out: dict[str, list[str]] = defaultdict(list)
    for field in fields:
        node, _, user = field.decode().rpartition("|")
        out[node].append(user)
    return out


async def read_upto(redis: Redis, gids: list[str]) -> dict[str, int]:
    """Each group's newest read fan-out seq (0: it has only ever used write fan-out)."""
    if not gids:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for gid in gids:
            pipe.hget(keys.group_info(gid), keys.READ_UPTO)
        return {gid: int(value or 0) for gid, value in zip(gids, await pipe.execute(), strict=True)}


async def catch_up(redis: Redis, user: str, gids: list[str] | None = None) -> dict[str, int]:
    """Bring one user's counts up to date in their read fan-out groups now (what the flush would
    do for them in a few seconds). Returns those groups' newest read fan-out seqs."""
    if gids is None:
        gids = sorted(text(gid) for gid in await redis.smembers(keys.user_groups(user)))
    marks = {gid: seq for gid, seq in (await read_upto(redis, gids)).items() if seq}
    if marks:
        def advance_all(pipe: Pipeline) -> None:
            for gid, seq in marks.items():
                queue_advance(pipe, user, gid, seq, 0)

        await run_pipeline(redis, advance_all)
    return marks


async def flush_pending(redis: Redis) -> int:
    """Flush the unread counts of every read fan-out group with new messages to its members.

    The pending hash is in Redis, so a flush a crashed worker did not do is done by the next
    tick of any worker. Returns the number of member updates.
    """
    # one worker at a time (each would do the same work); the lock outlives no crash for long
    async with locks.try_hold(redis, keys.fan_out_lock(), 60_000) as held:
        return await _flush(redis) if held else 0


async def _flush(redis: Redis) -> int:
    pending = await redis.hgetall(keys.fan_out_pending())
    updates = 0
    for field, value in sorted(pending.items()):
        conversation, seq = text(field), int(value)
        gid = group_id(conversation) or ""
        members = [text(member) for member in await redis.hkeys(keys.group_members(gid))]
        for start in range(0, len(members), FLUSH_CHUNK):
            chunk = members[start : start + FLUSH_CHUNK]

            def advance_chunk(pipe: Pipeline, chunk: list[str] = chunk, gid: str = gid, seq: int = seq) -> None:
                for member in chunk:
                    queue_advance(pipe, member, gid, seq, 0)

            await run_pipeline(redis, advance_chunk)
        updates += len(members)
        await script(redis, "settle_field")(keys=[keys.fan_out_pending()], args=[conversation, seq])
    return updates


async def unread_messages(
    redis: Redis, user: str, marks: dict[str, int], limit: int, log_limit: int | None = None
) -> list[bytes]:
    """The user's unread messages in read fan-out groups (never in their inbox): per group the
    newest ``limit`` after their read position and among the group's newest ``log_limit``
    (what the conversation log is sure to hold; older ones are the archive's, for history),
    without those the user deleted for themself (as a delete takes a message out of the inbox).
    JSON entries of the conversation log."""
    if not marks:
        return []
    gids = sorted(marks)
    async with redis.pipeline(transaction=False) as pipe:
        for gid in gids:
            pipe.hget(keys.read_seq(user), group_conversation(gid))
            pipe.hget(keys.group_joined(gid), user)
            pipe.get(keys.conversation_seq(group_conversation(gid)))
        positions = await pipe.execute()
    async with redis.pipeline(transaction=False) as pipe:
        for i, gid in enumerate(gids):
            read, joined, newest = (int(value or 0) for value in positions[3 * i : 3 * i + 3])
            floor = max(read, joined, newest - log_limit if log_limit is not None else 0)
            pipe.zrevrangebyscore(keys.conversation_log(group_conversation(gid)), marks[gid], f"({floor}", start=0, num=limit)
        found = [entry for entries in await pipe.execute() for entry in entries]
    if not found:
        return []
    deleted = await redis.smismember(keys.deleted(user), [orjson.loads(entry)["mid"] for entry in found])
    return [entry for entry, hidden in zip(found, deleted, strict=True) if not hidden]
