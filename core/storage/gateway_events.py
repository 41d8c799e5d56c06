"""Notifications and plugin frames for the gateways: each gateway listens on its own channel
and routes by user.

An event carries either a service notification (``"push"``: core/notifications.py, which the
gateway turns into a client frame) or a frame a plugin built (``"frame"``: plugins own their
frames' shape).

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
from .redis_client import publish_sharded

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

    from ..notifications import Notification


def own_channel(node: str) -> str:
    """The pub/sub channel gateway ``node`` listens on for its users' events (sharded on a Redis
    Cluster: published with ``redis_client.publish_sharded``, reaching only its slot's shard)."""
    return keys.gateway_channel(node)


def orders_channel() -> str:
    """The pub/sub channel every gateway listens on for orders to all (revocations): classic
    PUBLISH, which a Redis Cluster forwards to every node, so it is heard on any of them."""
    return keys.gateways_channel()


def _envelope(users: list[str], part: str, body: dict[str, Any], skip: str, only: str) -> dict[str, Any]:
    """An event for every connection of ``users`` on a gateway, except the connection ``skip``;
    with ``only``, for that one connection alone (a sender's ``sent``). ``part`` says what
    ``body`` is: ``push`` (a notification as it travels) or ``frame`` (a plugin's own frame)."""
    out: dict[str, Any] = {"users": users, part: body}
    if skip:
        out["skip"] = skip
    if only:
        out["only"] = only
    return out


def notice(users: list[str], push: Notification, skip: str = "", only: str = "") -> dict[str, Any]:
    """A service notification for every connection of ``users`` on a gateway (see ``_envelope``)."""
    return _envelope(users, "push", push.wire(), skip, only)


class GatewayBatch:
    """Notifications collected per gateway, published as one message each."""

    def __init__(self) -> None:
        self.by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, node: str, users: list[str], push: Notification, skip: str = "", only: str = "") -> None:
        """One event for these users of a gateway: the notification is carried and serialised once."""
        self.by_node[node].append(notice(users, push, skip, only))

    def queue(self, pipe: Pipeline) -> None:
        for node, events in self.by_node.items():
            publish_sharded(pipe, keys.gateway_channel(node), orjson.dumps(events))


async def publish(redis: Redis, batch: GatewayBatch) -> None:
    """Publish a batch: one message per gateway, in one round trip."""
    if batch.by_node:
        async with redis.pipeline(transaction=False) as pipe:
            batch.queue(pipe)
            await pipe.execute()


async def notify(redis: Redis, node: str, user: str, push: Notification) -> None:
    """One notification for every connection of ``user`` on gateway ``node``."""
    await publish_sharded(redis, keys.gateway_channel(node), orjson.dumps([notice([user], push)]))


async def _to_user(redis: Redis, user: str, event: dict[str, Any]) -> None:
    for node in await presence.gateways_of(redis, user):
        await publish_sharded(redis, keys.gateway_channel(node), orjson.dumps([event]))


async def notify_user(redis: Redis, user: str, push: Notification, skip: str = "") -> None:
    """One notification for every connection of ``user``, on whichever gateways hold them,
    except the connection ``skip`` (the one a reply already answered)."""
    await _to_user(redis, user, notice([user], push, skip))


async def frame_to_gateways(
    redis: Redis, by_node: dict[str, list[str]], frame: dict[str, Any], priority: int, skip: str = "",
) -> None:
    """A plugin's frame to every connection of the users each gateway of ``by_node`` holds (gateway
    -> users), one publish per gateway in one round trip, but the connection ``skip`` (one a reply
    answered). ``priority`` (a ``Priority`` value) is how the gateway queues it for a client that
    is behind: the lowest is dropped first."""
    if not by_node:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for node, users in by_node.items():
            event = {**_envelope(users, "frame", frame, skip, ""), "priority": priority}
            publish_sharded(pipe, keys.gateway_channel(node), orjson.dumps([event]))
        await pipe.execute()


async def to_user(redis: Redis, user: str, frame: dict[str, Any], skip: str = "") -> None:
    """A plugin's frame to every connection of the user, on whichever gateways hold them,
    except the connection ``skip``."""
    await _to_user(redis, user, _envelope([user], "frame", frame, skip, ""))
