"""Step 3 of the message path: accept a send once, give it a message id and the next seq."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from . import keys
from .ids import IdGenerator
from .models import Accepted, Message, SendCommand
from .scripts import script

if TYPE_CHECKING:
    from redis.asyncio import Redis


async def accept(
    redis: Redis, ids: IdGenerator, command: SendCommand, dedup_ttl_seconds: int, log_limit: int = 1000
) -> tuple[Accepted, Message | None]:
    """Store the message once; a replay gets the first answer and the stored message back.

    The message is None only for a replay so old that the conversation log no longer holds it.
    """
    unsaved = orjson.dumps(
        {
            "conversation": command.conversation,
            "sender": command.sender,
            "client_msg_id": command.client_msg_id,
            "type": command.type,
            "body": command.body,
            "sent_at_ms": command.sent_at_ms,
        }
    )
    mid, seq, duplicate, entry = await script(redis, "ingest")(
        keys=[
            keys.dedup(command.conversation, command.sender, command.client_msg_id),
            keys.conversation_seq(command.conversation),
            keys.conversation_log(command.conversation),
        ],
        args=[ids.next_id(), dedup_ttl_seconds, unsaved, log_limit],
    )
    accepted = Accepted(
        conversation=command.conversation,
        sender=command.sender,
        client_msg_id=command.client_msg_id,
        mid=int(mid),
        seq=int(seq),
        duplicate=bool(duplicate),
    )
    return accepted, Message.model_validate_json(entry) if entry else None
