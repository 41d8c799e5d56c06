"""Recalling and editing a message after it was sent: the service (the ``recall_edit`` plugin's
operations call it; docs/protocol.md "Recall and edit").

A change rewrites the stored message in place, everywhere it is stored, so every read returns
the latest version with no change of its own: the conversation log (history, read fan-out's
unread pages, and the ingest script's answer to a replayed send), each member's inbox entry
while they have not ACKed it, and the archive (an ``im_msg_versions`` row; its readers apply
it). A recall leaves a tombstone: mid, seq, conversation, sender, client_msg_id, type and
sent_at_ms stay, ``body`` is ``{}``, ``recalled_at_ms``/``recalled_by`` say when and who. An
edit makes version 2, 3, … with ``edited_at_ms``.

Unread: a recall records its seq for every member who had not read it (core/storage/amend.py),
and every count is set as last - read - those recalled seqs in between, so the count of whoever
had not read the message drops by one, exactly once, in both fan-out modes, and ``imflow repair
unread`` rebuilds it. Then every device of every member is told (``recalled`` / ``edited``
frames, but the connection that asked: its reply answers it; ``unread`` for those whose count
dropped), then the plugins (``imflow_message_amended``).

Refusals (ImflowError): ``not_found`` (not a member, or a seq the user may not see or that does
not exist), ``message.not_yours``, ``message.too_late``, ``message.not_text``,
``message.recalled``, ``bad_frame`` (an edit's body the ``text`` type refuses), and for an
edit's mentions what a send's get (``bad_frame``, ``not_a_member``, ``forbidden``). Each changes
nothing. Repeating a recall, or an edit to the body a message has, answers the message as it is
and does nothing else, unless the change it finds is still marked untold (``amend_log.lua`` sets
the mark with the rewrite, ``_finish`` clears it after the hook): then a failure or crash
interrupted it after the log, and the repeat does the members, the archive row, the pushes and
the hook again (every step is idempotent; the pushes and hook are at least once).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from . import groups, mentions, message_types
from .errors import ErrorCode, ImflowError
from .models import Message, SendCommand, direct_members
from .notifications import UnreadChanged
from .plugin_types import Amendment, Priority
from .storage import amend, gateway_events
from .storage import groups as group_store

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .services import Services

log = logging.getLogger(__name__)

NOT_YOURS = "message.not_yours"  # neither the sender nor (for a recall) a group's owner or admin
TOO_LATE = "message.too_late"  # the window has passed (or the message is older than the live log)
NOT_TEXT = "message.not_text"  # only text messages are edited
RECALLED = "message.recalled"  # a recalled message is not edited
RECALL, EDIT = "recall", "edit"  # Amendment.kind
ATTEMPTS = 5  # reads and rewrites of the log entry when other changes race this one


@dataclass(frozen=True)
class Recall:
    """``user`` recalls message ``seq`` of ``conversation``; as its sender, within ``window_ms``
    of its ``sent_at_ms`` (a group's owner or admin: any message, any time)."""

    user: str
    conversation: str
    seq: int
    window_ms: int
    origin: str = ""  # the connection that asked: its reply answers it, it gets no push


@dataclass(frozen=True)
class Edit:
    """``user`` replaces the body of their text message ``seq`` of ``conversation`` by ``body``,
    within ``window_ms`` of its ``sent_at_ms``."""

    user: str
    conversation: str
    seq: int
    body: Any
    window_ms: int
    origin: str = ""  # the connection that asked: its reply answers it, it gets no push


@dataclass(frozen=True)
class Amended:
    """The message as stored now (a dict, as clients get it); ``changed`` False for a repeat
    (nothing changed and nobody was told), True for a change, or a repeat that finished an
    interrupted one."""

    message: dict[str, Any]
    changed: bool


async def recall(services: Services, command: Recall) -> Amended:
    """Recall a message for everyone: its tombstone. Raises ImflowError (module docstring)."""
    pair = direct_members(command.conversation)
    admin = pair is None and await _is_admin(services, command.conversation, command.user)
    at_ms = services.clock()

    def change(message: Message) -> Message | None:
        if not admin and message.sender != command.user:
            raise ImflowError(NOT_YOURS, "only its sender (or a group's owner or admin) recalls a message")
        if message.recalled_at_ms is not None:
            return None  # a repeat (a resend after the window too): the tombstone as it is
        if not admin:
            _within(message, at_ms, command.window_ms, "recalled")
        return message.model_copy(update={"body": {}, "recalled_at_ms": at_ms, "recalled_by": command.user})

    return await _amend(services, command.user, command.conversation, command.seq, RECALL, change, command.origin)


async def edit(services: Services, command: Edit) -> Amended:
    """Edit a text message: its next version. Raises ImflowError (module docstring); mentions in
    the new body are not notified again."""
    at_ms = services.clock()

    def change(message: Message) -> Message | None:
        if message.sender != command.user:
            raise ImflowError(NOT_YOURS, "only its sender edits a message")
        if message.recalled_at_ms is not None:
            raise ImflowError(RECALLED, "the message was recalled")
        if message.type != message_types.TEXT.name:
            raise ImflowError(NOT_TEXT, f"only text messages are edited, not {message.type!r}")
        _within(message, at_ms, command.window_ms, "edited")
        body = message_types.validate_body(message_types.TEXT, command.body)
        if body == message.body:
            return None  # a resend of the same edit: the version as it is
        return message.model_copy(update={"body": body, "version": (message.version or 1) + 1, "edited_at_ms": at_ms})

    async def mentions_may_go(new: Message) -> None:  # as a send's: bad_frame, not_a_member, forbidden
        await mentions.check(services, SendCommand(
            sender=new.sender, client_msg_id=new.client_msg_id, conversation=new.conversation, type=new.type, body=new.body,
            sent_at_ms=new.sent_at_ms))

    return await _amend(services, command.user, command.conversation, command.seq, EDIT, change, command.origin,
                        mentions_may_go)


def _within(message: Message, at_ms: int, window_ms: int, verb: str) -> None:
    if at_ms - message.sent_at_ms > window_ms:
        raise ImflowError(TOO_LATE, f"a message can be {verb} for {window_ms // 1000} s after it was sent")


async def _is_admin(services: Services, conversation: str, user: str) -> bool:
    gid = groups.group_id(conversation)
    return gid is not None and await group_store.role_of(services.redis, gid, user) in (groups.OWNER, groups.ADMIN)


async def _amend(
    services: Services, user: str, conversation: str, seq: int, kind: str, change: Callable[[Message], Message | None],
    origin: str, vet: Callable[[Message], Awaitable[None]] | None = None,
) -> Amended:
    """Read the message, let ``change`` check it and make its new form (None: nothing to change)
    and ``vet`` check that (raising), rewrite the log if nobody changed it meanwhile, then the
    members, the archive, the pushes and the hook."""
    redis = services.redis
    await groups.require_member(services, conversation, user)
    if seq < 1 or not await groups.may_see(redis, conversation, user, seq):
        raise ImflowError(ErrorCode.NOT_FOUND, f"no message {seq} in {conversation!r} for you")
    for _ in range(ATTEMPTS):
        entry = await amend.log_entry(redis, conversation, seq)
        if entry is None:
            if seq > await amend.last_seq(redis, conversation):
                raise ImflowError(ErrorCode.NOT_FOUND, f"no message {seq} in {conversation!r} for you")
            # trimmed from the live log (which keeps the newest messages and all not archived yet):
            # long past every window; an admin's recall of it is not supported either
            raise ImflowError(TOO_LATE, "the message is too old to change")
        stored = Message.model_validate_json(entry)
        new = change(stored)
        if new is None:  # a repeat: nothing to do, unless the change it repeats was interrupted
            mark = amend.change_mark(seq, kind, stored.version or 1)
            untold = await amend.untold(redis, conversation, mark)
            if untold:
                await _finish(services, stored, entry, kind, origin, mark)
            return Amended(orjson.loads(entry), changed=untold)
        if vet is not None:
            await vet(new)
        new_entry = orjson.dumps(new.model_dump())
        mark = amend.change_mark(seq, kind, new.version or 1)
        if await amend.rewrite_log(redis, conversation, seq, entry, new_entry, mark):
            if kind == EDIT:  # the "mentions me" counts follow the current version (never gain one)
                await mentions.edited(services, conversation, seq, stored.body, new.body)
            await _finish(services, new, new_entry, kind, origin, mark)
            return Amended(orjson.loads(new_entry), changed=True)
    raise ImflowError(ErrorCode.CONFLICT, "the message kept changing; try again")


async def _finish(services: Services, message: Message, entry: bytes, kind: str, origin: str, mark: str) -> None:
    """Everything after the log: each member's inbox entry and count, the archive row, the
    pushes (not to the connection ``origin``, which the reply answers) and the hook; then the
    change ``mark`` is told. Idempotent: run again (a repeat of the request finds the mark) it
    only tells again, and raises (Redis errors) before the mark is cleared."""
    redis, s = services.redis, services.settings
    dumped = message.model_dump()
    pair = direct_members(message.conversation)
    users = await amend.members(redis, message.conversation, pair)
    big = pair is None and len(users) >= s.read_fan_out_threshold  # push through the online index
    rank = amend.TOMBSTONE_RANK if kind == RECALL else (message.version or 1)
    outcomes = await amend.amend_members(redis, users, entry, dumped, rank, kind == RECALL, with_gateways=not big)
    by = message.recalled_by if kind == RECALL else message.sender
    at_ms = (message.recalled_at_ms if kind == RECALL else message.edited_at_ms) or 0
    row = {"mid": message.mid, "conversation": message.conversation, "seq": message.seq,
           "version": message.version or 1, "kind": kind, "body": orjson.dumps(message.body).decode(),
           "by_user": by, "at_ms": at_ms}
    await amend.record_version(redis, s.app_id, s.topic_partitions, row)  # at least once: readers de-duplicate
    if big:
        by_node = await amend.online(redis, groups.group_id(message.conversation) or "")
    else:
        by_node = defaultdict(list)
        for outcome in outcomes:
            for node in outcome.gateways or ():
                by_node[node].append(outcome.user)
    frame: dict[str, Any] = (
        {"op": "recalled", "conversation": message.conversation, "seq": message.seq, "mid": message.mid, "by": by,
         "at_ms": at_ms}
        if kind == RECALL else {"op": "edited", "message": dumped}
    )
    await gateway_events.frame_to_gateways(redis, dict(by_node), frame, Priority.NORMAL, skip=origin)
    await _unread_pushes(services, [o for o in outcomes if o.unread_changed], by_node, message.conversation)
    amendment = Amendment(kind, message.conversation, message.seq, message.mid, by or "", at_ms, dumped)
    await services.hooks.call.message_amended(amendment=amendment, services=services)
    await amend.told(redis, message.conversation, mark)


async def _unread_pushes(
    services: Services, changed: list[amend.MemberOutcome], by_node: dict[str, list[str]], conversation: str
) -> None:
    """The ``unread`` push to every device of the members whose count dropped."""
    if not changed:
        return
    nodes_of: dict[str, list[str]] = defaultdict(list)
    for node, held in by_node.items():
        for user in held:
            nodes_of[user].append(node)
    batch = gateway_events.GatewayBatch()
    for outcome in changed:
        state: dict[str, Any] = {"conversation": conversation, "count": outcome.count, "total": outcome.total,
                                 "read_seq": outcome.read_seq}
        if outcome.mentions:  # left out while 0, as everywhere (docs/protocol.md, "Mentions")
            state["mentions"] = outcome.mentions
        for node in outcome.gateways if outcome.gateways is not None else nodes_of[outcome.user]:
            batch.add(node, [outcome.user], UnreadChanged(state))
    await gateway_events.publish(services.redis, batch)
