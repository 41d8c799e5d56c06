"""Frames for the gateways: each gateway listens on its own channel and routes by user.

One publish carries a list of events, so a batch of messages costs one pub/sub message per
gateway, not one per receiver: the subscriber's per-message overhead is what limits a
gateway otherwise.

Pub/sub may lose a publish (a gateway restarting, a slow subscriber). That is by design: the
inbox holds every message until the client ACKs it, and a lost ACK makes the client resend,
which de-duplication answers with the same mid and seq.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson

from . import keys, presence

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline


def event(user: str, frame: dict[str, Any], skip: str = "", only: str = "") -> dict[str, Any]:
    """A frame for every connection of ``user`` on a gateway, except the connection ``skip``;
    with ``only``, for that one connection of the user alone (a sender's ``sent``)."""
    out: dict[str, Any] = {"user": user, "frame": frame}
    if skip:
        out["skip"] = skip
    if only:
        out["only"] = only
    return out


class GatewayBatch:
    """Events collected per gateway, published as one message each."""

    def __init__(self) -> None:
        self.by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, node: str, user: str, frame: dict[str, Any], skip: str = "", only: str = "") -> None:
        self.by_node[node].append(event(user, frame, skip, only))

    def add_many(self, node: str, users: list[str], frame: dict[str, Any], skip: str = "") -> None:
        """One event for many users of a gateway: the frame is carried and serialised once."""
        out: dict[str, Any] = {"users": users, "frame": frame}
        if skip:
            out["skip"] = skip
        self.by_node[node].append(out)

    def queue(self, pipe: Pipeline) -> None:
        for node, events in self.by_node.items():
            pipe.publish(keys.gateway_channel(node), orjson.dumps(events))


async def to_gateway(redis: Redis, node: str, user: str, frame: dict[str, Any], skip: str = "") -> None:
    await redis.publish(keys.gateway_channel(node), orjson.dumps([event(user, frame, skip)]))


async def to_user(redis: Redis, user: str, frame: dict[str, Any], skip: str = "") -> None:
    """To every connection of the user, on whichever gateways hold them, except the connection
    ``skip`` (the one a reply already answered)."""
    for node in await presence.gateways_of(redis, user):
        await to_gateway(redis, node, user, frame, skip)
