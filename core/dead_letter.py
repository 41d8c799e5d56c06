"""The dead-letter topic: records no agent can process, set aside once, their senders told.

A record that fails for a reason other than a storage outage (which is waited out) would
otherwise be skipped in silence, and a resend of it would be lost the same way. Instead it
goes to ``<app>.dead_letter`` with the error, and a sender whose send it was gets an
``error`` frame with code ``rejected`` and the ``cmid``: a resend cannot succeed either.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import orjson

from .ids import now_ms
from .notifications import Rejected
from .storage import dead_letters, gateway_events

if TYPE_CHECKING:
    from .agents import AgentContext

log = logging.getLogger(__name__)

TOPIC = "dead_letter"  # short name; the app id is prefixed (agents.topic_name)
SEEN_TTL_S = 7 * 24 * 3600  # as long as a cmid is de-duplicated


async def set_aside(ctx: AgentContext, agent: str, value: bytes, partition: int, error: str) -> None:
    """Put ``value`` (a record of ``agent``'s topic) on the dead-letter topic and tell its sender.

    The dead-letter record is JSON: ``agent``, ``partition``, ``error``, ``digest`` (sha256 of
    the value, hex), ``value_b64`` (the bytes as they came), ``at_ms``. Idempotent under
    replay: a record already set aside is not produced again (a crash between producing and
    marking may produce it twice; readers de-duplicate by ``digest``).
    """
    digest = hashlib.sha256(value).hexdigest()
    app_id = ctx.settings.app_id
    if await dead_letters.was_set_aside(ctx.redis, app_id, digest):
        return
    log.error(
        "agent %s: set aside a record of partition %d on the dead-letter topic (%s): %s", agent, partition, digest[:12], error
    )
    record = {
        "agent": agent,
        "partition": partition,
        "error": error[:2000],
        "digest": digest,
        "value_b64": base64.b64encode(value).decode(),
        "at_ms": now_ms(),
    }
    await ctx.producer.send(ctx.topic(TOPIC), digest.encode(), orjson.dumps(record))
    sender = _sender_of(value)
    if sender is not None:
        node, user, cmid = sender
        why = f"message {cmid} could not be processed and was set aside; do not resend it unchanged"
        await gateway_events.notify(ctx.redis, node, user, Rejected(cmid, why))
    # marked last: a crash before this sets the record aside (and tells its sender) again
    await dead_letters.mark_set_aside(ctx.redis, app_id, digest, SEEN_TTL_S)


def _sender_of(value: bytes) -> tuple[str, str, str] | None:
    """(gateway, sender, cmid) of a send record, if they can be read at all."""
    try:
        data: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    found = data.get("gateway"), data.get("sender"), data.get("client_msg_id")
    if all(isinstance(item, str) and item for item in found):
        return found  # type: ignore[return-value]
    return None
