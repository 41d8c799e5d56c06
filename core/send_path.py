"""Steps 3 to 6 of the message path for a batch of sends: accept, fan out, archive, push, ACK.

A batch costs three Redis round trips whatever its size: every script and command of a step
goes in one pipeline, and Redis runs them in order, so seqs follow the order of the topic.

Idempotent as a whole: a replay of the same commands re-runs every step, and each step does
nothing the second time (dedup key, last-delivered seq, read-time archive de-duplication).
A replay after a crash half-way through finishes the work the crash interrupted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from . import archive_queue, gateway_events, keys
from .inbox import delivery_result, queue_delivery
from .ingest import accepted_from, queue_accept
from .groups import group_id
from .models import Message, SendCommand, direct_members
from .scripts import run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from .ids import IdGenerator
    from .settings import Settings

log = logging.getLogger(__name__)


async def members_by_conversation(redis: Redis, conversations: set[str]) -> dict[str, list[str]]:
    """Members of each conversation of a batch, groups read in one round trip (now, not cached)."""
    out: dict[str, list[str]] = {}
    groups = sorted(c for c in conversations if group_id(c))
    for conversation in conversations - set(groups):
        pair = direct_members(conversation)
        if pair is not None:
            out[conversation] = sorted(set(pair))
    if groups:
        async with redis.pipeline(transaction=False) as pipe:
            for conversation in groups:
                pipe.hkeys(keys.group_members(group_id(conversation) or ""))
            for conversation, members in zip(groups, await pipe.execute(), strict=True):
                if members:
                    out[conversation] = sorted(member.decode() for member in members)
    return out


async def handle_sends(
    redis: Redis,
    ids_for: Callable[[int], IdGenerator],
    settings: Settings,
    batch: list[tuple[SendCommand, int]],
    after_persist: Callable[[list[Message]], Awaitable[None]] | None = None,
) -> list[Message]:
    """Process sends in topic order; returns the stored messages (a replay's too), in order.

    ``ids_for(partition)`` gives that partition's id generator. ``after_persist`` runs once the
    batch is durable and before anyone is told, so what it sets up (a red packet, say) exists
    by the time a client sees the message.
    """
    work = []
    known = await members_by_conversation(redis, {command.conversation for command, _ in batch})
    for command, partition in batch:
        members = known.get(command.conversation)
        if members is None or command.sender not in members:
            # the gateway refuses these; a record that gets here anyway is dropped, not stored
            log.warning("dropped a send from %s into %s: not a member", command.sender, command.conversation)
            continue
        work.append((command, partition, members))
    if not work:
        return []

    # 1. accept: dedup, mid, seq, conversation log
    def accept_all(pipe: Pipeline) -> None:
        for command, partition, _ in work:
            queue_accept(pipe, ids_for(partition), command, settings.dedup_ttl_seconds, settings.conversation_log_limit)

    _, results = await run_pipeline(redis, accept_all)
    answers = [accepted_from(command, result) for (command, _, _), result in zip(work, results, strict=True)]

    # 2. fan out: archive queue and each member's inbox and unread; where members are connected
    users = sorted({member for (_, _, members), (_, message) in zip(work, answers, strict=True) if message for member in members})

    def fan_out(pipe: Pipeline) -> tuple[list[tuple[Message, str, int, str]], int]:
        deliveries = []  # (message, member, index of its reply, connection to skip)
        for (command, partition, members), (_, message) in zip(work, answers, strict=True):
            if message is None:
                continue
            archive_queue.queue_message(pipe, settings.app_id, partition, message, members)
            for member in members:
                skip = command.origin if member == command.sender else ""
                deliveries.append((message, member, len(pipe), skip))
                queue_delivery(pipe, message, member, settings.inbox_limit)
        first_lookup = len(pipe)
        for user in users:
            pipe.hkeys(keys.user_gateways(user))
        return deliveries, first_lookup

    (deliveries, first_lookup), results = await run_pipeline(redis, fan_out)
    gateways = {user: [node.decode() for node in nodes] for user, nodes in zip(users, results[first_lookup:], strict=True)}

    stored = [message for _, message in answers if message is not None]
    if after_persist is not None and stored:
        await after_persist(stored)

    # 3. the messages are durable now (conversation log, inboxes, archive queue): tell everyone
    frames = gateway_events.GatewayBatch()
    for message, member, index, skip in deliveries:
        fresh, unread = delivery_result(message, results[index])
        if fresh:
            frame = {"op": "msg", "message": message.model_dump(), "unread": unread.to_dict()}
            for node in gateways[member]:
                # the sending connection has the message already: it gets the 'sent' ACK
                frames.add(node, member, frame, skip)
    for (command, _, _), (accepted, _) in zip(work, answers, strict=True):
        if command.gateway:
            frame = {"op": "sent", "cmid": accepted.client_msg_id, "conversation": accepted.conversation, "mid": accepted.mid, "seq": accepted.seq}
            frames.add(command.gateway, command.sender, frame)
    async with redis.pipeline(transaction=False) as pipe:
        frames.queue(pipe)
        await pipe.execute()
    return stored
