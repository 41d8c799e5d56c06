"""Frames for the gateways: each gateway listens on its own channel and routes by user.

Pub/sub may lose a frame (a gateway restarting, a slow subscriber). That is by design: the
inbox holds every message until the client ACKs it, and a lost ACK makes the client resend,
which de-duplication answers with the same mid and seq.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from . import keys, presence

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline


def _event(user: str, frame: dict[str, Any]) -> bytes:
    return orjson.dumps({"user": user, "frame": frame})


async def to_gateway(redis: Redis, node: str, user: str, frame: dict[str, Any]) -> None:
    await redis.publish(keys.gateway_channel(node), _event(user, frame))


def queue_to_gateway(pipe: Pipeline, node: str, user: str, frame: dict[str, Any]) -> None:
    pipe.publish(keys.gateway_channel(node), _event(user, frame))


async def to_user(redis: Redis, user: str, frame: dict[str, Any]) -> None:
    """To every connection of the user, on whichever gateways hold them."""
    for node in await presence.gateways_of(redis, user):
        await to_gateway(redis, node, user, frame)
