"""The sending service: what a send must pass before it is queued (``prepare``, at the gateway),
and steps 3 to 6 of the message path for a batch of sends (accept, fan out, archive, notify).
The ingest agent is one call to ``ingest``.

A batch costs four Redis round trips whatever its size (look at the conversations, accept,
fan out, publish): every script and command of a step goes in one pipeline, and Redis runs
them in order, so seqs follow the order of the topic. Group messages go out by write or read
fan-out (core/storage/fan_out.py), chosen per group and sender by the ``imflow_fan_out_policy``
hook or by size.

Idempotent as a whole: a replay of the same commands re-runs every step, and each step does
nothing the second time (dedup key, last-delivered seq, read-time archive de-duplication).
A replay after a crash half-way through finishes the work the crash interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from . import contacts, dead_letter, groups, mentions, message_types, offline_push, wire
from .errors import ErrorCode, ImflowError
from .groups import group_id
from .models import Message, SendCommand, direct_members
from .notifications import Delivered, Sent
from .plugin_types import OfflinePush, Rejection, plugin_error_code
from .storage import archive_queue, fan_out, gateway_events, presence
from .storage import mentions as mention_store
from .storage.fan_out import GroupView, Mode
from .storage.inbox import delivery_result, inbox_entry, queue_delivery
from .storage.ingest import accepted_from, first_mode, queue_accept, was_stored
from .storage.scripts import Reply, reply, run_pipeline

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from .agents import AgentContext, Records
    from .models import Accepted
    from .plugin_types import GatewayContext, MessageType
    from .services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Draft:
    """A send as the client asked for it: ``sender`` on connection ``origin`` puts a message of
    ``type`` with ``body`` (decoded JSON) into ``conversation``, idempotent by ``cmid``."""

    sender: str
    conversation: str
    cmid: str
    type: str
    body: Any
    origin: str = ""


async def prepare(
    services: Services, draft: Draft, types: Mapping[str, MessageType], gateway: GatewayContext | None = None
) -> SendCommand:
    """The command to queue for a draft, once it may go: the sender is a member, the type is
    known (``types``: name -> MessageType, imflow's and the plugins') and the body valid for it,
    a one-to-one message passes the recipient's account, blocks and privacy
    (``contacts.check_direct``: one round trip shared by the sends of an event-loop tick; group
    messages are not filtered by blocks), and no plugin's ``imflow_before_send`` refused it (a
    plugin may also rewrite it). Sends between the same two users take turns on this process.

    Raises ImflowError: ``forbidden`` (not a member, or ``mention_all`` from a plain member),
    ``bad_frame`` (unknown type, invalid body, mentions outside a group), ``not_a_member`` (a
    mentioned user is not in the group; core/mentions.py), ``not_found`` / ``user_deactivated``
    / ``blocked`` / ``contacts_only`` (a one-to-one message that may not reach its recipient),
    a plugin's code (``plugin.reason``, with ``retry_after_ms`` for its limits).
    """
    await groups.require_member(services, draft.conversation, draft.sender, to_send=True)
    message_type = types.get(draft.type)
    if message_type is None:
        raise ImflowError(ErrorCode.BAD_FRAME, f"unknown message type {draft.type!r}; known: {', '.join(sorted(types))}")
    command = SendCommand(
        sender=draft.sender,
        client_msg_id=draft.cmid,
        conversation=draft.conversation,
        type=draft.type,
        body=message_types.validate_body(message_type, draft.body),
        sent_at_ms=services.clock(),
        gateway=services.node,
        origin=draft.origin,
    )
    await mentions.check(services, command)  # before a one-to-one check leaves its mark
    pair = direct_members(draft.conversation)
    if pair is None or pair[0] == pair[1]:  # the same user twice: a note to oneself, unchecked
        return await _admitted(services, draft, command, gateway, "", marked=False)
    recipient = pair[1] if pair[0] == draft.sender else pair[0]
    # sends between the same two users, one after another: a mark the first takes back (a
    # plugin refused it) must not have let the second through, or be taken from under it
    async with _TURNS.turn(draft.conversation):
        marked = False
        try:
            marked = await contacts.check_direct(services, draft.sender, recipient)
        except ImflowError:
            # a resend of a message stored before a block or a privacy change is not a new
            # message: it goes on, and the worker answers with the first 'sent' (dedup)
            if not await was_stored(services.redis, draft.conversation, draft.sender, draft.cmid):
                raise
        return await _admitted(services, draft, command, gateway, recipient, marked)


async def _admitted(
    services: Services, draft: Draft, command: SendCommand, gateway: GatewayContext | None, recipient: str, marked: bool
) -> SendCommand:
    """The command once no plugin refused it (``marked``: the check made a first-message mark,
    taken back if a plugin refuses)."""
    verdict = await services.hooks.call.before_send(command=command, gateway=gateway)
    if isinstance(verdict, Rejection):  # a plugin's code always has its dot (never passes for ours)
        if marked:  # the message does not go: its recipient may not answer on its account
            await contacts.first_write_undone(services, draft.sender, recipient)
        raise ImflowError(plugin_error_code(verdict.code), verdict.message, verdict.retry_after_ms)
    return verdict if isinstance(verdict, SendCommand) else command


class _Turns:
    """One task at a time per key, the others waiting in order (a lock per key, dropped when
    nobody holds or waits for it)."""

    def __init__(self) -> None:
        self.locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        lock, users = self.locks.get(key) or self.locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self.locks[key]


_TURNS = _Turns()  # this process's one-to-one sends, by conversation


async def ingest(ctx: AgentContext, records: Records) -> None:
    """The ingest agent: decode each record as the gateways do (core/wire.py and their limits;
    a record they would refuse is set aside on the dead-letter topic), then ``handle_sends``."""
    batch = []
    for value, partition in records:
        try:
            batch.append((SendCommand.model_validate(wire.decode(value)), partition))
        except (ImflowError, pydantic.ValidationError) as exc:
            await dead_letter.set_aside(ctx, "ingest", value, partition, f"malformed record: {exc}")
    await handle_sends(ctx, batch)


@dataclass
class _Send:
    """One send of a batch as it goes through the steps."""

    command: SendCommand
    partition: int
    members: list[str] | None  # None: a read fan-out group too big to list
    mode: Mode
    accepted: Accepted | None = None
    message: Message | None = None  # None: refused, or a replay the log no longer holds


async def views_of(redis: Redis, batch: list[tuple[SendCommand, int]], list_below: int) -> dict[str, GroupView]:
    """Size, members and member senders of each conversation of a batch, read now (one round
    trip for all its groups; members listed only for groups smaller than ``list_below``)."""
    out: dict[str, GroupView] = {}
    senders: dict[str, set[str]] = defaultdict(set)
    for command, _ in batch:
        senders[command.conversation].add(command.sender)
    in_groups = sorted(c for c in senders if group_id(c))
    for conversation in senders.keys() - set(in_groups):
        pair = direct_members(conversation)
        if pair is not None:
            members = sorted(set(pair))
            out[conversation] = GroupView(len(members), members, frozenset(members))
    if in_groups:
        asked = {conversation: sorted(senders[conversation]) for conversation in in_groups}

        def view_all(pipe: Pipeline) -> dict[str, Reply]:
            return {c: fan_out.queue_group_view(pipe, group_id(c) or "", list_below, asked[c]) for c in in_groups}

        replies, _ = await run_pipeline(redis, view_all)
        for conversation, handle in replies.items():
            view = fan_out.group_view(handle.value, list_below, asked[conversation])
            if view.count:
                out[conversation] = view
    return out


async def _choose_mode(ctx: AgentContext, conversation: str, members: int, sender: str) -> Mode:
    """Write or read fan-out for this group message: a plugin's answer, else by size."""
    chosen = await ctx.hooks.call.fan_out_policy(conversation=conversation, members=members, sender=sender)
    if chosen is not None and chosen not in fan_out.MODES:
        log.warning("imflow_fan_out_policy answered %r for %s; using the default", chosen, conversation)
        chosen = None
    return chosen or fan_out.default_mode(members, ctx.settings.read_fan_out_threshold)


async def _plan(ctx: AgentContext, batch: list[tuple[SendCommand, int]]) -> list[_Send]:
    """The sends of a batch that may go ahead, with their members and fan-out mode."""
    views = await views_of(ctx.redis, batch, ctx.settings.read_fan_out_threshold)
    work = []
    modes: dict[tuple[str, str], Mode] = {}
    for command, partition in batch:
        view = views.get(command.conversation)
        if view is None or command.sender not in view.senders:
            # the gateway refuses these; a record that gets here anyway is dropped, not stored
            log.warning("dropped a send from %s into %s: not a member", command.sender, command.conversation)
            continue
        mode: Mode = "write"
        if group_id(command.conversation):
            key = (command.conversation, command.sender)
            if key not in modes:
                modes[key] = await _choose_mode(ctx, command.conversation, view.count, command.sender)
            mode = modes[key]
        work.append(_Send(command, partition, view.members, mode))
    return work


async def _accept(ctx: AgentContext, work: list[_Send]) -> None:
    """Step 1: dedup, mid, seq, conversation log (and the fan-out mode, kept for replays)."""
    s = ctx.settings

    def accept_all(pipe: Pipeline) -> list[Reply]:
        return [
            queue_accept(pipe, ctx.ids(send.partition), send.command, s.dedup_ttl_seconds, s.conversation_log_limit, send.mode)
            for send in work
        ]

    replies, _ = await run_pipeline(ctx.redis, accept_all)
    for send, handle in zip(work, replies, strict=True):
        send.accepted, send.message = accepted_from(send.command, handle.value)
        # a replay goes the way the message first went, whatever the group's size or a plugin says now
        send.mode = first_mode(handle.value) or send.mode  # type: ignore[assignment]
    unlisted = sorted({send.command.conversation for send in work if send.mode == "write" and send.members is None})
    if unlisted:  # a plugin chose write fan-out for a group too big to list in the first look
        listed = await fan_out.members_of(ctx.redis, [group_id(c) or "" for c in unlisted])
        for send in work:
            if send.members is None and send.command.conversation in unlisted:
                send.members = listed[group_id(send.command.conversation) or ""]


@dataclass
class _Fanned:
    """Handles on the replies of step 2."""

    deliveries: list[tuple[Message, str, Reply, str]]  # write: (message, member, its delivery, connection to skip)
    stored_once: list[tuple[Message, str, fan_out.StoredReplies]]  # read: (message, connection to skip, replies)
    gateways: dict[str, Reply]  # write fan-out's members -> the gateways holding them
    # group messages of write fan-out: (mid, member) -> the member's mentions record (mentions.lua)
    mentions: dict[tuple[int, str], Reply] = field(default_factory=dict)
    everyone: dict[str, Reply] = field(default_factory=dict)  # group conversation -> its read fan-out @all seqs
    # read fan-out: (message, member, their counts after advance.lua) for each member it names
    named: list[tuple[Message, str, Reply]] = field(default_factory=list)


async def _fan_out(ctx: AgentContext, work: list[_Send]) -> _Fanned:
    """Step 2: archive queue; write: each member's inbox and unread; read: the group's marks."""
    s = ctx.settings
    users = {m for send in work if send.message is not None and send.mode == "write" for m in send.members or ()}

    def fan_out_all(pipe: Pipeline) -> _Fanned:
        fanned = _Fanned([], [], {})
        for send in work:
            message = send.message
            if message is None:
                continue
            mentioned = mentions.of(message)
            if send.mode == "read":
                archive_queue.queue_message(pipe, s.app_id, send.partition, message, [message.conversation])
                stored = fan_out.queue_stored(pipe, message, group_id(message.conversation) or "")
                fanned.stored_once.append((message, send.command.origin, stored))
                _queue_read_mentions(pipe, message, mentioned, fanned)
                continue
            archive_queue.queue_message(pipe, s.app_id, send.partition, message, send.members or [])
            entry = inbox_entry(message)  # the same bytes for every member: made once
            in_group = group_id(message.conversation) is not None
            if in_group and message.conversation not in fanned.everyone:
                fanned.everyone[message.conversation] = mention_store.queue_everyone_seqs(pipe, message.conversation)
            for member in send.members or ():
                skip = send.command.origin if member == send.command.sender else ""
                delivery = queue_delivery(pipe, message, member, s.inbox_limit, entry)
                fanned.deliveries.append((message, member, delivery, skip))
                if in_group:  # the member's count for the push; a record if the message names them
                    seq = message.seq if mentioned.includes(member) else 0
                    fanned.mentions[message.mid, member] = mention_store.queue_record(pipe, member, message.conversation, seq)
        named = {member for _, member, _ in fanned.named}
        fanned.gateways = {user: presence.queue_gateways_of(pipe, user) for user in sorted(users | named)}
        return fanned

    fanned, _ = await run_pipeline(ctx.redis, fan_out_all)
    return fanned


def _queue_read_mentions(pipe: Pipeline, message: Message, mentioned: mentions.Mentioned, fanned: _Fanned) -> None:
    """Read fan-out's mention records: ``@all`` once on the conversation (never a write per
    member), each member named by name on their own, brought up to the message (as the flush
    would a moment later) so their count and total are exact for the push."""
    if mentioned.everyone:
        mention_store.queue_everyone(pipe, message.conversation, message.seq)
    gid = group_id(message.conversation) or ""
    for member in sorted(mentioned.users - {message.sender}):
        fan_out.queue_advance(pipe, member, gid, message.seq, 0)
        fanned.named.append((message, member, reply(pipe)))
        mention_store.queue_record(pipe, member, message.conversation, message.seq)


async def _notify(ctx: AgentContext, work: list[_Send], fanned: _Fanned) -> None:
    """Step 3: the messages are durable now (conversation log, inboxes, archive queue): tell
    everyone connected, then the offline push plugins about those who are not."""
    batch = gateway_events.GatewayBatch()
    # the senders' ACKs first: a gateway routes events in order, and a push to a thousand
    # members of a big group should not stand in front of the one notification its sender waits for
    for send in work:
        accepted = send.accepted
        if send.command.gateway and accepted is not None:
            ack = Sent(accepted.client_msg_id, accepted.conversation, accepted.mid, accepted.seq)
            # the connection that sent it, alone: the sender's other devices get the message
            batch.add(send.command.gateway, [send.command.sender], ack, only=send.command.origin)
    # every gateway that holds them, one presumed dead included: if it was only paused, it still
    # delivers when it wakes (nobody has swept it yet), as read fan-out's online index does
    gateways = {user: presence.gateways_from(handle.value) for user, handle in fanned.gateways.items()}
    everyone = {conversation: mention_store.everyone_from(handle) for conversation, handle in fanned.everyone.items()}
    offline: list[OfflinePush] = []
    push_offline = ctx.hooks.has_implementations("imflow_offline_push")  # else nobody listens: no work
    mentioned: dict[int, mentions.Mentioned] = {}  # mid -> who it mentions, made once
    dumped: dict[int, dict[str, Any]] = {}  # mid -> the message as JSON, made once
    for message, member, handle, skip in fanned.deliveries:
        nodes = gateways[member]
        if not nodes:  # offline: the inbox holds it for their next sync, a push plugin may tell them
            if push_offline and member != message.sender:
                fresh, unread = delivery_result(message, handle.value)
                if message.mid not in mentioned:
                    mentioned[message.mid] = mentions.of(message)
                if fresh:
                    offline.append(OfflinePush(member, message, unread.total, mentioned[message.mid].includes(member)))
            continue
        fresh, unread = delivery_result(message, handle.value)
        if fresh:
            if message.mid not in dumped:
                dumped[message.mid] = message.model_dump()
            state = unread.to_dict()
            record = fanned.mentions.get((message.mid, member))
            if record is not None:  # a group's: the member's "mentions me" count (left out when 0)
                mine = mention_store.UserMentions.of(record.value)
                if count := mine.count(everyone[message.conversation]):
                    state["mentions"] = count
            push = Delivered(dumped[message.mid], state)
            for node in nodes:
                # the sending connection has the message already: it gets the 'sent' ACK
                batch.add(node, [member], push, skip)
    unseen: list[tuple[Message, dict[str, list[str]]]] = []  # read fan-out: (message, who is online)
    for message, skip, stored in fanned.stored_once:
        # one event per gateway for all the members it holds; each member's count follows from
        # seqs (message.seq - their read seq) and reaches them with the next flush or sync
        fresh, online = stored.result()
        push = Delivered.of(message)
        for node, members in online.items() if fresh else ():
            batch.add(node, members, push, skip)
        if fresh and push_offline:
            unseen.append((message, online))
    await gateway_events.publish(ctx.redis, batch)
    # who to push offline in read fan-out groups is worked out only now: an @all in a group of
    # 10,000 lists every member and reads their totals (chunked round trips), which must not
    # hold back the batch's 'sent' ACKs and pushes; still in the agent, so at most once
    for message, online in unseen:
        offline.extend(await _read_fan_out_offline(ctx, message, online, fanned, gateways))
    await offline_push.notify(ctx, offline)


async def _read_fan_out_offline(
    ctx: AgentContext, message: Message, online: dict[str, list[str]], fanned: _Fanned, gateways: dict[str, list[str]]
) -> list[OfflinePush]:
    """The offline pushes of one read fan-out message: only the members it mentions, with no
    connection (everyone else's count waits for their next sync, as for connected members).
    Members named by name have exact totals (brought up to the message); for ``@all`` the
    group's members are listed and their totals read (in chunks), only when a push plugin listens."""
    connected = {user for users in online.values() for user in users}
    named = [(member, handle) for of_message, member, handle in fanned.named if of_message is message]
    out = [
        OfflinePush(member, message, int(handle.value[1]), mentions=True)
        for member, handle in named
        if not gateways.get(member) and member not in connected
    ]
    if not mentions.of(message).everyone:
        return out
    gid = group_id(message.conversation) or ""
    skip = connected | {member for member, _ in named} | {message.sender}
    rest = [member for member in (await fan_out.members_of(ctx.redis, [gid]))[gid] if member not in skip]
    totals = await mention_store.unread_totals(ctx.redis, rest)
    return out + [OfflinePush(member, message, totals[member], mentions=True) for member in rest]


async def handle_sends(ctx: AgentContext, batch: list[tuple[SendCommand, int]]) -> list[Message]:
    """Process sends (command, ingest partition) in topic order; returns the stored messages
    (a replay's too), in order.

    Plugins' ``imflow_after_persist`` runs once the batch is durable and before anyone is told,
    so what it sets up (a red packet, say) exists by the time a client sees the message.
    Raises Redis errors as they come (the agent retries the batch: every step is idempotent).
    """
    work = await _plan(ctx, batch)
    if not work:
        return []
    await _accept(ctx, work)
    fanned = await _fan_out(ctx, work)
    stored = [send.message for send in work if send.message is not None]
    if stored:
        await ctx.hooks.call.after_persist(messages=stored, context=ctx)
    await _notify(ctx, work, fanned)
    return stored
