"""Step 3 of the message path: accept a send once, give it a message id and the next seq."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from . import keys
from .ids import IdGenerator
from .models import Accepted, SendCommand
from .scripts import script

if TYPE_CHECKING:
    from redis.asyncio import Redis


async def accept(redis: Redis, ids: IdGenerator, command: SendCommand, dedup_ttl_seconds: int) -> Accepted:
    """Store the message and return its (mid, seq); a replay returns the first answer unchanged."""
    stored = orjson.dumps(
        {
            "conversation": command.conversation,
            "sender": command.sender,
            "client_msg_id": command.client_msg_id,
            "body": command.body,
            "sent_at_ms": command.sent_at_ms,
        }
    )
    mid, seq, duplicate = await script(redis, "ingest")(
        keys=[
            keys.dedup(command.conversation, command.sender, command.client_msg_id),
            keys.conversation_seq(command.conversation),
            keys.conversation_log(command.conversation),
        ],
        args=[ids.next_id(), dedup_ttl_seconds, stored],
    )
    return Accepted(
        conversation=command.conversation,
        sender=command.sender,
        client_msg_id=command.client_msg_id,
        mid=int(mid),
        seq=int(seq),
        duplicate=bool(duplicate),
    )
