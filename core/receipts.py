"""Read receipts (docs/protocol.md, "Read receipts"): who has read a message, from the members'
read positions (one read seq per member and conversation: a message is read by those whose
read seq is at or above its seq).

Per-message receipts exist in one-to-one conversations and groups below
``IMFLOW_READ_FAN_OUT_THRESHOLD`` members; above it they are refused (``receipts_unavailable``):
asking every member's read position for every message is a read fan-out of its own, the cost
read fan-out exists to avoid (OpenIM and WeChat make the same choice). The one-to-one
``receipt`` push is core/conversations.py's (``read``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import groups
from .errors import ErrorCode, ImflowError
from .models import direct_members, group_id
from .storage import receipts as store

if TYPE_CHECKING:
    from .services import Services

MAX_SEQS = 100  # seqs one ``receipts`` request asks about


# -- commands and results


@dataclass(frozen=True)
class AskReceipts:
    """How many have read each of ``seqs`` (1–100) of ``conversation``, asked by ``user``."""

    user: str
    conversation: str
    seqs: tuple[int, ...]


@dataclass(frozen=True)
class AskReaders:
    """Who has read message ``seq`` of ``conversation``, and who has not, asked by ``user``."""

    user: str
    conversation: str
    seq: int


@dataclass(frozen=True)
class Receipts:
    """Per asked seq, in the order asked: {seq, read, members}: of ``members`` (the members now,
    other than its sender, who were in the conversation when it was sent) ``read`` have read it."""

    conversation: str
    receipts: list[dict[str, int]]


@dataclass(frozen=True)
class Readers:
    """The members (as in ``Receipts``) who have ``read`` message ``seq`` and those who have not
    (``unread``), each sorted."""

    conversation: str
    seq: int
    read: list[str]
    unread: list[str]


# -- use cases


async def receipts(services: Services, command: AskReceipts) -> Receipts:
    """How many have read each seq. Raises ImflowError ``not_found`` (not a member, or a seq the
    user may not see or that does not exist), ``receipts_unavailable`` (a group at or above the
    read fan-out threshold), ``bad_frame`` (no seqs or more than 100)."""
    if not 1 <= len(command.seqs) <= MAX_SEQS:
        raise ImflowError(ErrorCode.BAD_FRAME, f"ask about 1 to {MAX_SEQS} seqs")
    audience = await _audience(services, command.user, command.conversation, sorted(set(command.seqs)))
    out = []
    for seq in command.seqs:
        readers, others = audience.split(seq)
        out.append({"seq": seq, "read": len(readers), "members": len(readers) + len(others)})
    return Receipts(command.conversation, out)


async def readers(services: Services, command: AskReaders) -> Readers:
    """Who has read one message; the same refusals as ``receipts``."""
    audience = await _audience(services, command.user, command.conversation, [command.seq])
    read, unread = audience.split(command.seq)
    return Readers(command.conversation, command.seq, read, unread)


@dataclass(frozen=True)
class _Audience:
    senders: dict[int, str]  # seq -> its sender
    joined: dict[str, int]  # member -> the seq after which they see the conversation
    read: dict[str, int]  # member -> their read seq

    def split(self, seq: int) -> tuple[list[str], list[str]]:
        """(those who have read ``seq``, those who have not), sorted: the members but its sender
        who were there when it was sent."""
        others = sorted(m for m, joined in self.joined.items() if m != self.senders[seq] and joined < seq)
        return [m for m in others if self.read[m] >= seq], [m for m in others if self.read[m] < seq]


async def _audience(services: Services, user: str, conversation: str, seqs: list[int]) -> _Audience:
    """The members, their read seqs and the senders of ``seqs`` (ascending), once the user may ask:
    the Redis log and the last seq in one round trip, then one archive query for seqs older than
    the log (never one per seq)."""
    redis = services.redis
    await groups.require_member(services, conversation, user)
    pair, gid = direct_members(conversation), group_id(conversation)
    if pair is not None:
        joined = dict.fromkeys(pair, 0)
    else:
        audience = await store.group_audience(redis, gid or "", services.settings.read_fan_out_threshold)
        if audience.joined is None:
            raise ImflowError(
                ErrorCode.RECEIPTS_UNAVAILABLE,
                f"no per-message receipts in groups of {services.settings.read_fan_out_threshold} members or more",
            )
        joined = audience.joined
    floor = joined.get(user, 0)
    hidden = [seq for seq in seqs if seq <= floor]
    if hidden:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no message {hidden[0]} in {conversation!r} for you")
    found, last = await store.senders(redis, conversation, seqs)
    missing = [seq for seq in seqs if seq not in found]
    if missing and missing[-1] > last:  # seqs are ascending: none above the last exists
        raise ImflowError(ErrorCode.NOT_FOUND, f"no message {missing[-1]} in {conversation!r} for you")
    if missing:  # older than the Redis log holds: the archive's, one query for them all
        archived = {}
        if services.archive is not None:
            archived = await asyncio.to_thread(store.archived_senders, services.archive, conversation, missing)
        gone = [seq for seq in missing if seq not in archived]
        if gone:
            raise ImflowError(ErrorCode.NOT_FOUND, f"no message {gone[0]} in {conversation!r} for you")
        found.update(archived)
    return _Audience(found, joined, await store.read_seqs(redis, sorted(joined), conversation))
