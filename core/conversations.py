"""Conversations, the service of reads: read reports, sync, history, delete-for-me and ACKs.

Each use case takes ``Services`` and a typed command and returns a typed result; refusals are
ImflowError with stable codes. Membership is ``groups.require_member`` (``not_found`` to a
non-member). Redis keys stay in core/storage; the wire frames are the gateway's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from . import conversation_settings, groups, mentions, unread
from .models import direct_members
from .notifications import Receipt, UnreadChanged
from .storage import archive_queue, conversation_log, fan_out, gateway_events, inbox
from .storage import mentions as mention_store
from .storage import receipts as receipt_store

if TYPE_CHECKING:
    from .services import Services

NO_SEQ = 1 << 53  # above every seq: a history page without ``before_seq`` starts from the newest




@dataclass(frozen=True)
class Unread(inbox.Unread):
    """The result of ``read``: the user's counts now (the gateway frames it), with their
    "mentions me" count there (``mentions``, left out of the dict when 0)."""

    mentions: int = 0

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        if self.mentions:
            out["mentions"] = self.mentions
        return out


# -- commands


@dataclass(frozen=True)
class Read:
    """``user`` has read ``conversation`` up to ``seq`` on connection ``origin`` (whose reply
    answers it; the user's other connections are told)."""

    user: str
    conversation: str
    seq: int
    origin: str = ""


@dataclass(frozen=True)
class Sync:
    """A page of ``user``'s inbox older than ``before_mid`` (None: the first page), at most ``limit``."""

    user: str
    before_mid: int | None
    limit: int


@dataclass(frozen=True)
class History:
    """A page of ``conversation`` below ``before_seq`` (None: the newest), at most ``limit``."""

    user: str
    conversation: str
    before_seq: int | None
    limit: int


@dataclass(frozen=True)
class Delete:
    """Hide message ``mid`` of ``conversation`` from ``user`` only."""

    user: str
    conversation: str
    mid: int


@dataclass(frozen=True)
class Acknowledge:
    """``user``'s client has messages ``mids``: they leave the inbox."""

    user: str
    mids: tuple[int, ...]


# -- results


@dataclass(frozen=True)
class SyncPage:
    """Messages newest first, as stored (JSON fragments, passed through unparsed); the cursor of
    the next older page (None at the end); on the first page only, every conversation's state
    ({conversation, last_seq, read_seq, unread, pinned, muted, hidden, marked_unread, and
    ``peer_read_seq`` / ``mentions`` when above 0}) and the unread total."""

    messages: list[Any]
    next_before_mid: int | None
    conversations: list[dict[str, Any]] | None = None
    total_unread: int | None = None


@dataclass(frozen=True)
class HistoryPage:
    """The page's visible messages newest first, and the ``before_seq`` of the next older page
    (None when the first seq the user may see is reached)."""

    conversation: str
    messages: list[dict[str, Any]]
    next_before_seq: int | None


@dataclass(frozen=True)
class Deleted:
    conversation: str
    mid: int


@dataclass(frozen=True)
class Acknowledged:
    removed: int  # how many inbox entries went


# -- use cases


async def read(services: Services, command: Read) -> Unread:
    """Move the read position forward (never back) and return the conversation's unread count,
    the user's total, the read seq and the "mentions me" count now (the mentions at or below the
    read seq no longer count). The archive keeps the report for analysts, and the user's other
    connections are told (``UnreadChanged``, the same state). A read ends the conversation's
    ``marked_unread`` (core/conversation_settings.py). In a one-to-one conversation, a read seq
    that moved forward is told to the other user's devices (``Receipt``).
    """
    redis, user = services.redis, command.user
    await groups.require_member(services, command.conversation, user)
    gid = groups.group_id(command.conversation)
    if gid:  # a read fan-out group's count may wait for its flush: bring it up to date first
        await unread.catch_up(services, user, [gid])
    move, _ = await asyncio.gather(  # two of the user's keys, side by side: no round trip added
        receipt_store.mark_read(redis, user, command.conversation, command.seq),
        conversation_settings.read_clears_mark(services, user, command.conversation, command.origin),
    )
    everyone: list[int] = []
    if gid and move.mentions.last > move.mentions.read:  # @all of a read fan-out group: one record on the group
        everyone = await mention_store.everyone_between(redis, command.conversation, move.mentions.read, move.mentions.last)
    counts = Unread(**vars(move.unread), mentions=move.mentions.count(everyone))
    # the archive keeps read reports for analysts (read delays, unread backlogs)
    s, conversation = services.settings, command.conversation
    await archive_queue.enqueue_read(redis, s.app_id, s.topic_partitions, user, conversation, counts.read_seq, services.clock())
    await gateway_events.notify_user(redis, user, UnreadChanged(counts.to_dict()), skip=command.origin)
    pair = direct_members(conversation)
    if pair is not None and pair[0] != pair[1] and move.moved:
        peer = pair[1] if pair[0] == user else pair[0]
        await gateway_events.notify_user(redis, peer, Receipt(conversation, user, counts.read_seq or 0))
    return counts


async def sync(services: Services, command: Sync) -> SyncPage:
    """A page of the inbox; the first page also brings the counts of read fan-out groups up to
    date and carries every conversation's state and their unread messages, which are in no inbox."""
    redis, user = services.redis, command.user
    first_page = command.before_mid is None
    # a sync flushes this user's read fan-out groups first, so its counts are exact now
    marks = await unread.catch_up(services, user) if first_page else {}
    messages, next_before, mids = await inbox.inbox_page(redis, user, command.before_mid, command.limit)
    if not first_page:
        return SyncPage(list(messages), next_before)
    conversations, total = await inbox.conversation_states(redis, user)
    await conversation_settings.of_conversations(services, user, conversations)  # pinned, muted, hidden, marked_unread
    await _receipts_and_mentions(services, user, conversations)
    in_no_inbox = await fan_out.unread_messages(redis, user, marks, command.limit, services.settings.conversation_log_limit)
    page: list[Any] = list(messages)
    if in_no_inbox:
        by_mid: dict[int, Any] = dict(zip(mids, messages, strict=True))
        for entry in in_no_inbox:  # a message in both (the group switched mode) is sent once
            by_mid.setdefault(orjson.loads(entry)["mid"], orjson.Fragment(entry))
        page = [by_mid[mid] for mid in sorted(by_mid, reverse=True)]  # newest first
    return SyncPage(page, next_before, conversations, total)


async def _receipts_and_mentions(services: Services, user: str, states: list[dict[str, Any]]) -> None:
    """Add to the conversation states what others' reads and mentions say: ``peer_read_seq``
    (one-to-one: the other user's read seq) and ``mentions`` (the "mentions me" count), each
    left out when 0."""
    peers = {}
    for state in states:
        pair = direct_members(state["conversation"])
        if pair is not None and pair[0] != pair[1]:
            peers[state["conversation"]] = pair[1] if pair[0] == user else pair[0]
    peer_reads, counts = await asyncio.gather(
        receipt_store.peer_read_seqs(services.redis, peers), mentions.counts(services, user, states)
    )
    for state in states:
        if peer_reads.get(state["conversation"]):
            state["peer_read_seq"] = peer_reads[state["conversation"]]
        if counts.get(state["conversation"]):
            state["mentions"] = counts[state["conversation"]]


async def history(services: Services, command: History) -> HistoryPage:
    """A page back through the conversation by seq: Redis's log first, the archive below it;
    a group member sees what came after they joined, nothing before."""
    redis, user, conversation, limit = services.redis, command.user, command.conversation, command.limit
    await groups.require_member(services, conversation, user)
    floor = await groups.seen_from(redis, conversation, user)
    messages = await conversation_log.page(redis, conversation, command.before_seq, floor, limit)
    # 'before_seq: 0' (or 1) asks for nothing; None for everything
    oldest = messages[-1]["seq"] if messages else (command.before_seq if command.before_seq is not None else NO_SEQ)
    if len(messages) < limit and oldest > floor + 1 and services.archive is not None:
        # older than what Redis keeps: the archive's mailbox index, then the contents. Deleted
        # messages count towards the page there too: which ones are hidden is Redis's word, so
        # a page is the same before and after the archive has sealed a deletion
        older = await asyncio.to_thread(
            services.archive.history_page, user, conversation, oldest, limit - len(messages), floor, include_deleted=True,
        )
        messages.extend(older)
    hidden = await inbox.deleted_among(redis, user, [m["mid"] for m in messages])
    visible = [m for m in messages if m["mid"] not in hidden]
    last_seq = messages[-1]["seq"] if messages else None
    return HistoryPage(conversation, visible, last_seq if last_seq is not None and last_seq > floor + 1 else None)


async def delete(services: Services, command: Delete) -> Deleted:
    """Hide one message from the user only (the other side and the content stay); the archive
    records the deletion. A mid that is not a message of the user's hides nothing."""
    await groups.require_member(services, command.conversation, command.user)
    await inbox.delete_for_me(services.redis, command.user, command.mid)
    s, at_ms = services.settings, services.clock()
    await archive_queue.enqueue_deletion(services.redis, s.app_id, s.topic_partitions, command.user, command.mid, at_ms)
    return Deleted(command.conversation, command.mid)


async def acknowledge(services: Services, command: Acknowledge) -> Acknowledged:
    """Take the messages out of the user's inbox (the offline queue)."""
    return Acknowledged(await inbox.acknowledge(services.redis, command.user, list(command.mids)))
