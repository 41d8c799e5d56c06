"""Steps 3 to 6 of the message path for a batch of sends: accept, fan out, archive, push, ACK.

A batch costs four Redis round trips whatever its size (look at the conversations, accept,
fan out, publish): every script and command of a step goes in one pipeline, and Redis runs
them in order, so seqs follow the order of the topic. Group messages go out by write or read
fan-out (core/fan_out.py), chosen per group and sender.

Idempotent as a whole: a replay of the same commands re-runs every step, and each step does
nothing the second time (dedup key, last-delivered seq, read-time archive de-duplication).
A replay after a crash half-way through finishes the work the crash interrupted.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .storage import archive_queue, fan_out, gateway_events, keys
from .storage.fan_out import GroupView, Mode
from .storage.inbox import delivery_result, queue_delivery
from .storage.ingest import accepted_from, first_mode, queue_accept
from .groups import group_id
from .models import Message, SendCommand, direct_members
from .storage.scripts import run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from .ids import IdGenerator
    from .settings import Settings

log = logging.getLogger(__name__)


ChooseMode = Callable[[str, int, str], Awaitable[Mode | None]]


async def views_of(redis: Redis, batch: list[tuple[SendCommand, int]], list_below: int) -> dict[str, GroupView]:
    """Size, members and member senders of each conversation of a batch, read now (one round
    trip for all its groups; members listed only for groups smaller than ``list_below``)."""
    out: dict[str, GroupView] = {}
    senders: dict[str, set[str]] = defaultdict(set)
    for command, _ in batch:
        senders[command.conversation].add(command.sender)
    groups = sorted(c for c in senders if group_id(c))
    for conversation in senders.keys() - set(groups):
        pair = direct_members(conversation)
        if pair is not None:
            members = sorted(set(pair))
            out[conversation] = GroupView(len(members), members, frozenset(members))
    if groups:
        asked = {conversation: sorted(senders[conversation]) for conversation in groups}

        def view_all(pipe: Pipeline) -> None:
            for conversation in groups:
                fan_out.queue_group_view(pipe, group_id(conversation) or "", list_below, asked[conversation])

        _, results = await run_pipeline(redis, view_all)
        for conversation, result in zip(groups, results, strict=True):
            view = fan_out.group_view(result, list_below, asked[conversation])
            if view.count:
                out[conversation] = view
    return out


async def handle_sends(
    redis: Redis,
    ids_for: Callable[[int], IdGenerator],
    settings: Settings,
    batch: list[tuple[SendCommand, int]],
    after_persist: Callable[[list[Message]], Awaitable[None]] | None = None,
    choose_mode: ChooseMode | None = None,
) -> list[Message]:
    """Process sends in topic order; returns the stored messages (a replay's too), in order.

    ``ids_for(partition)`` gives that partition's id generator. ``after_persist`` runs once the
    batch is durable and before anyone is told, so what it sets up (a red packet, say) exists
    by the time a client sees the message. ``choose_mode(conversation, members, sender)``
    picks write or read fan-out for a group message (default: by size, see core/fan_out.py).
    """
    threshold = settings.read_fan_out_threshold
    views = await views_of(redis, batch, threshold)
    work = []  # (command, partition, members or None, mode)
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
                chosen = await choose_mode(command.conversation, view.count, command.sender) if choose_mode else None
                modes[key] = chosen if chosen in fan_out.MODES else fan_out.default_mode(view.count, threshold)
            mode = modes[key]
        work.append((command, partition, view.members, mode))
    if not work:
        return []

    # 1. accept: dedup, mid, seq, conversation log (and the fan-out mode, kept for replays)
    def accept_all(pipe: Pipeline) -> None:
        for command, partition, _, mode in work:
            queue_accept(pipe, ids_for(partition), command, settings.dedup_ttl_seconds, settings.conversation_log_limit, mode)

    _, results = await run_pipeline(redis, accept_all)
    answers = [accepted_from(command, result) for (command, *_), result in zip(work, results, strict=True)]
    # a replay goes the way the message first went, whatever the group's size or a plugin says now
    work = [(c, p, members, first_mode(result) or mode) for (c, p, members, mode), result in zip(work, results, strict=True)]
    unlisted = sorted({command.conversation for command, _, members, mode in work if mode == "write" and members is None})
    if unlisted:  # a plugin chose write fan-out for a group too big to list in the first look
        async with redis.pipeline(transaction=False) as pipe:
            for conversation in unlisted:
                pipe.hkeys(keys.group_members(group_id(conversation) or ""))
            listed = {c: sorted(m.decode() for m in found) for c, found in zip(unlisted, await pipe.execute(), strict=True)}
        work = [(c, p, listed.get(c.conversation, members), mode) for c, p, members, mode in work]

    # 2. fan out: archive queue; write: each member's inbox and unread; read: the group's marks
    users = sorted({member for (_, _, members, mode), (_, message) in zip(work, answers, strict=True)
                    if message is not None and mode == "write" for member in members or ()})

    def fan_out_all(pipe: Pipeline) -> tuple[list[tuple[Message, str, int, str]], list[tuple[Message, str, int]], int]:
        deliveries = []  # (message, member, index of its reply, connection to skip)
        stored_once = []  # read fan-out: (message, connection to skip, index of its replies)
        for (command, partition, members, mode), (_, message) in zip(work, answers, strict=True):
            if message is None:
                continue
            if mode == "read":
                archive_queue.queue_message(pipe, settings.app_id, partition, message, [message.conversation])
                stored_once.append((message, command.origin, fan_out.queue_stored(pipe, message, group_id(message.conversation) or "")))
                continue
            archive_queue.queue_message(pipe, settings.app_id, partition, message, members or [])
            for member in members or ():
                skip = command.origin if member == command.sender else ""
                deliveries.append((message, member, len(pipe), skip))
                queue_delivery(pipe, message, member, settings.inbox_limit)
        first_lookup = len(pipe)
        for user in users:
            pipe.hkeys(keys.user_gateways(user))
        return deliveries, stored_once, first_lookup

    (deliveries, stored_once, first_lookup), results = await run_pipeline(redis, fan_out_all)
    gateways = {user: [node.decode() for node in nodes] for user, nodes in zip(users, results[first_lookup:], strict=True)}

    stored = [message for _, message in answers if message is not None]
    if after_persist is not None and stored:
        await after_persist(stored)

    # 3. the messages are durable now (conversation log, inboxes, archive queue): tell everyone
    frames = gateway_events.GatewayBatch()
    # the senders' ACKs first: a gateway routes events in order, and a push to a thousand
    # members of a big group should not stand in front of the one frame its sender waits for
    for (command, *_), (accepted, _) in zip(work, answers, strict=True):
        if command.gateway:
            frame = {"op": "sent", "cmid": accepted.client_msg_id, "conversation": accepted.conversation, "mid": accepted.mid, "seq": accepted.seq}
            # the connection that sent it, alone: the sender's other devices get the 'msg'
            frames.add(command.gateway, command.sender, frame, only=command.origin)
    for message, member, index, skip in deliveries:
        fresh, unread = delivery_result(message, results[index])
        if fresh:
            frame = {"op": "msg", "message": message.model_dump(), "unread": unread.to_dict()}
            for node in gateways[member]:
                # the sending connection has the message already: it gets the 'sent' ACK
                frames.add(node, member, frame, skip)
    for message, skip, index in stored_once:
        # one event per gateway for all the members it holds; each member's count follows from
        # seqs (message.seq - their read seq) and reaches them with the next flush or sync
        frame = {"op": "msg", "message": message.model_dump()}
        fresh, online = fan_out.stored_result(results, index)
        for node, members in online.items() if fresh else ():
            frames.add_many(node, members, frame, skip)
    async with redis.pipeline(transaction=False) as pipe:
        frames.queue(pipe)
        await pipe.execute()
    return stored
