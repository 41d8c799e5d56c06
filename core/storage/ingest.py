"""Step 3 of the message path: accept a send once, give it a message id and the next seq."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ..models import Accepted, Message, SendCommand
from . import keys
from .redis_client import text
from .scripts import Reply, queue_script, run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from ..ids import IdGenerator


def queue_accept(
    pipe: Pipeline, ids: IdGenerator, command: SendCommand, dedup_ttl_seconds: int, log_limit: int, mode: str = "write"
) -> Reply:
    """Add the ingest script for one command to a pipeline (commands run in order, one round
    trip); read its reply with ``accepted_from`` and ``first_mode``."""
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
    return queue_script(
        pipe,
        "ingest",
        keys=[
            keys.dedup(command.conversation, command.sender, command.client_msg_id),
            keys.conversation_seq(command.conversation),
            keys.conversation_log(command.conversation),
            keys.conversation_sealed(command.conversation),
            keys.conversation_amended(command.conversation),
        ],
        args=[ids.next_id(), dedup_ttl_seconds, unsaved, log_limit, mode],
    )


def accepted_from(command: SendCommand, result: list[Any]) -> tuple[Accepted, Message | None]:
    """The ingest script's answer: the server's (mid, seq) and the stored message.

    The message is None only for a replay so old that the conversation log no longer holds it.
    """
    mid, seq, duplicate, entry, _ = result
    accepted = Accepted(
        conversation=command.conversation,
        sender=command.sender,
        client_msg_id=command.client_msg_id,
        mid=int(mid),
        seq=int(seq),
        duplicate=bool(duplicate),
    )
    return accepted, Message.model_validate_json(entry) if entry else None


def first_mode(result: list[Any]) -> str | None:
    """The fan-out mode chosen when the message was first accepted (None: not recorded)."""
    mode = result[4]
    mode = text(mode) if mode is not None else None
    return mode or None


async def accept(
    redis: Redis, ids: IdGenerator, command: SendCommand, dedup_ttl_seconds: int, log_limit: int = 1000
) -> tuple[Accepted, Message | None]:
    """Store the message once; a replay gets the first answer and the stored message back."""
    _, (result,) = await run_pipeline(redis, lambda pipe: queue_accept(pipe, ids, command, dedup_ttl_seconds, log_limit))
    return accepted_from(command, result)


async def was_stored(redis: Redis, conversation: str, sender: str, client_msg_id: str) -> bool:
    """Whether this (sender, client message id) was stored in the conversation already (within
    the dedup window): a resend, whose answer is the first one's."""
    return bool(await redis.exists(keys.dedup(conversation, sender, client_msg_id)))
