"""The Redis side of recalling and editing a message (core/amending.py): the conversation log's
entry rewritten in place, each member's inbox entry and unread count, and the archive's
``im_msg_versions`` row.

The log entry is rewritten by ``amend_log.lua`` only if it is still the entry the caller read
and checked (a compare-and-set), so two changes racing never lose one. Members are done in
pipelines of ``fan_out.FLUSH_CHUNK`` (``amend_member.lua``, idempotent), so a 10,000-member
group is 40 round trips, never one giant pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..models import group_id
from . import archive_queue, fan_out, keys, mentions, presence
from .lake import VERSIONS
from .redis_client import text
from .scripts import Reply, queue_script, run_pipeline, script

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

MAX_SEQ = (1 << 53) - 1
TOMBSTONE_RANK = MAX_SEQ  # a recalled entry outranks every version (amend_member.lua)


@dataclass(frozen=True)
class MemberOutcome:
    """One member after a change: whether their unread count changed (a recall of a message they
    had not read), their counts now, and the gateways holding their connections (None: not
    asked, read fan-out size groups push through the group's online index)."""

    user: str
    unread_changed: bool
    count: int
    total: int
    read_seq: int
    gateways: list[str] | None
    mentions: int = 0  # their "mentions me" count now (asked for a recall only)


async def log_entry(redis: Redis, conversation: str, seq: int) -> bytes | None:
    """The conversation log's entry (message JSON) of ``seq``, None if the log does not hold it."""
    found = cast("list[bytes]", await redis.zrangebyscore(keys.conversation_log(conversation), seq, seq))
    return found[0] if found else None


async def last_seq(redis: Redis, conversation: str) -> int:
    """The conversation's newest seq (0: none yet)."""
    return int(await redis.get(keys.conversation_seq(conversation)) or 0)


change_mark = archive_queue.change_mark  # "{seq}:{version}" or "{seq}:r": one change of a message


async def rewrite_log(redis: Redis, conversation: str, seq: int, read: bytes, new: bytes, mark: str) -> bool:
    """Replace the log's entry of ``seq`` by ``new`` if it is still ``read``; False if it changed
    meanwhile (read it and check again) or is gone. ``mark`` (``change_mark`` of the change)
    joins the conversation's amended set (the log keeps the entry until the archive has the
    change's row) and becomes the seq's untold change (``untold``/``told``), atomically."""
    log = [keys.conversation_log(conversation), keys.conversation_amended(conversation),
           keys.conversation_untold(conversation)]
    done = await script(redis, "amend_log")(keys=log, args=[seq, read, new, mark])
    return bool(done)


async def untold(redis: Redis, conversation: str, mark: str) -> bool:
    """Whether the change ``mark`` is in the log but its members, pushes and hook are not all
    done yet (a failure or crash interrupted them)."""
    return await redis.zscore(keys.conversation_untold(conversation), mark) is not None


async def told(redis: Redis, conversation: str, mark: str) -> None:
    """The change ``mark`` is done everywhere: a repeat of its request changes and tells nothing."""
    await redis.zrem(keys.conversation_untold(conversation), mark)


async def members(redis: Redis, conversation: str, pair: tuple[str, str] | None) -> list[str]:
    """The current members of a conversation, sorted: a one-to-one's two users (one for a note to
    oneself), a group's members hash."""
    if pair is not None:
        return sorted(set(pair))
    gid = group_id(conversation) or ""
    return sorted(text(member) for member in await redis.hkeys(keys.group_members(gid)))


def _queue_member(pipe: Pipeline, user: str, entry: bytes, message: dict[str, Any], rank: int, recall: bool) -> Reply:
    return queue_script(
        pipe,
        "amend_member",
        keys=keys.user_state_keys(user),
        args=[message["conversation"], message["seq"], message["mid"], entry, rank, int(recall),
              int(user == message["sender"])],
    )


async def amend_members(
    redis: Redis, users: list[str], entry: bytes, message: dict[str, Any], rank: int, recall: bool, with_gateways: bool,
    chunk: int = fan_out.FLUSH_CHUNK,
) -> list[MemberOutcome]:
    """Run ``amend_member.lua`` for each user (``message`` is the new version or tombstone as a
    dict, ``entry`` its JSON), ``chunk`` users a pipeline; with ``with_gateways``, each user's
    gateways are looked up in the same pipeline, and for a ``recall`` their "mentions me" count
    after it (core/storage/mentions.py: a recalled mention no longer counts). Raises Redis
    errors (running it again is safe)."""
    conversation = message["conversation"]
    in_group = group_id(conversation) is not None
    everyone = await mentions.everyone_between(redis, conversation, 0, MAX_SEQ) if recall and in_group else []
    outcomes: list[MemberOutcome] = []
    for start in range(0, len(users), chunk):
        part = users[start : start + chunk]

        def fill(pipe: Pipeline, part: list[str] = part) -> list[tuple[str, Reply, Reply | None, Reply | None]]:
            return [
                (user, _queue_member(pipe, user, entry, message, rank, recall),
                 presence.queue_gateways_of(pipe, user) if with_gateways else None,
                 mentions.queue_record(pipe, user, conversation) if recall else None)
                for user in part
            ]

        handles, _ = await run_pipeline(redis, fill)
        for user, handle, nodes, mentioned in handles:
            changed, count, total, read = handle.value
            gateways = presence.gateways_from(nodes.value) if nodes is not None else None
            named = mentions.UserMentions.of(mentioned.value).count(everyone) if mentioned is not None else 0
            outcomes.append(MemberOutcome(user, bool(changed), int(count), int(total), int(read), gateways, named))
    return outcomes


async def online(redis: Redis, gid: str) -> dict[str, list[str]]:
    """The group's members connected now, by gateway (the read fan-out online index)."""
    found = await script(redis, "online_members")(keys=[keys.group_online(gid), keys.group_members(gid)], args=[])
    return fan_out.online_by_gateway(found)


async def record_version(redis: Redis, app_id: str, partitions: int, row: dict[str, Any]) -> None:
    """Queue one ``im_msg_versions`` row (mid, conversation, seq, version, kind, body JSON,
    by_user, at_ms) for the archive, on the queue of the message's conversation. At least once:
    readers de-duplicate on (mid, kind, version)."""
    partition = archive_queue.partition_for(row["conversation"], partitions)
    await archive_queue.enqueue_rows(redis, app_id, partition, VERSIONS, [row])
