"""Steps 3 to 6 of the message path for one send: accept, fan out, archive, push, ACK.

Idempotent as a whole: a replay of the same command re-runs every step, and each step does
nothing the second time (dedup key, last-delivered seq, read-time archive de-duplication).
A replay after a crash half-way through finishes the work the crash interrupted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import archive_queue, gateway_events
from .ingest import accept
from .inbox import deliver
from .models import Accepted, SendCommand, direct_members

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .ids import IdGenerator
    from .settings import Settings

log = logging.getLogger(__name__)


def members_of(conversation: str) -> list[str] | None:
    """The members of a conversation (one for a note to oneself), or None if it is unknown."""
    pair = direct_members(conversation)
    return sorted(set(pair)) if pair else None


async def handle_send(redis: Redis, ids: IdGenerator, settings: Settings, command: SendCommand, partition: int) -> Accepted | None:
    members = members_of(command.conversation)
    if members is None or command.sender not in members:
        # the gateway refuses these; a record that gets here anyway is dropped, not stored
        log.warning("dropped a send from %s into %s: not a member", command.sender, command.conversation)
        return None
    accepted, message = await accept(
        redis, ids, command, settings.dedup_ttl_seconds, settings.conversation_log_limit
    )
    if message is not None:
        await archive_queue.enqueue_message(redis, settings.app_id, partition, message, members)
        fresh = []
        for member in members:
            delivered, unread = await deliver(redis, message, member, settings.inbox_limit)
            if delivered:
                fresh.append((member, unread))
        # the message is durable now (conversation log, inboxes, archive queue): tell everyone
        for member, unread in fresh:
            frame = {"op": "msg", "message": message.model_dump(), "unread": unread.to_dict()}
            await gateway_events.to_user(redis, member, frame)
    if command.gateway:
        frame = {
            "op": "sent",
            "cmid": accepted.client_msg_id,
            "conversation": accepted.conversation,
            "mid": accepted.mid,
            "seq": accepted.seq,
        }
        await gateway_events.to_gateway(redis, command.gateway, command.sender, frame)
    return accepted
