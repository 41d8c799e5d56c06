"""imflow-shout: an example third-party imflow plugin, installed through its entry point.

- a message type ``shout`` (the text is sent in capitals);
- ``imflow_after_persist`` puts each stored shout on the plugin's own topic ``shout.counted``;
- an agent on that topic counts shouts per user in Redis, once per message id (Kafka may
  deliver a record twice);
- an operation ``shout.stats`` answers how many shouts a user has sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from imflow.core.agents import AgentSpec
from imflow.core.hookspecs import hookimpl
from imflow.core.plugin_types import MessageType, Operation, OperationError

TOPIC = "shout.counted"
COUNTS = "shout:counts"  # hash user -> shouts
SEEN = "shout:seen"  # set of counted mids


def validate(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a shout needs some text")
    return {"text": text.upper()}


async def stats(context, frame: dict[str, Any]) -> dict[str, Any]:
    user = frame.get("user", context.user)
    if not isinstance(user, str):
        raise OperationError("shout.bad_user", "user must be a string")
    return {"user": user, "shouts": int(await context.redis.hget(COUNTS, user) or 0)}


async def count_shouts(context, records) -> None:
    for value, _partition in records:
        shout = orjson.loads(value)
        if await context.redis.sadd(SEEN, shout["mid"]):  # a redelivered record counts once
            await context.redis.hincrby(COUNTS, shout["sender"], 1)


@hookimpl
def imflow_message_types() -> list[MessageType]:
    return [MessageType("shout", validate)]


@hookimpl
def imflow_client_operations() -> list[Operation]:
    return [Operation("shout.stats", stats)]


@hookimpl
def imflow_stream_agents() -> list[AgentSpec]:
    return [AgentSpec("shout.counter", TOPIC, count_shouts)]


@hookimpl
async def imflow_after_persist(messages, context) -> None:
    for message in messages:
        if message.type == "shout":
            record = orjson.dumps({"mid": message.mid, "sender": message.sender})
            await context.producer.send(context.topic(TOPIC), message.sender.encode(), record)
