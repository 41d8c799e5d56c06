"""The presence service: where each user's devices are connected, kept by the gateway that holds
them and cleared when a gateway dies (its heartbeat stops; any live gateway sweeps it); and
whether a user is online, which their contacts may watch.

A user is online while a connection of theirs is on a live gateway. When their connections over
all gateways go from none to some or back (a connect, a disconnect, the sweep of a dead
gateway, a gateway writing its entries back), ``PresenceChanged`` goes to their contacts'
gateways in one batch; each gateway hands it only to the connections watching that user
(gateway/hub.py). A hidden user's changes go nowhere: they look offline, never seen.

The indexes and the registry live in core/storage/presence.py and
core/storage/gateway_liveness.py. Every function raises Redis errors as they come. A connect
or disconnect counts one up or down, so it is not retried (a lost reply would count twice): the
gateway writes the user's count back instead (``write_back`` sets counts), at its next beat.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ErrorCode, ImflowError
from .ids import now_ms
from .storage import contacts as contact_store
from .storage import gateway_events, gateway_liveness, presence, redis_client
from .storage.gateway_liveness import Beat
from .storage.presence import Change, State

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

    from .services import Services

__all__ = [
    "Beat", "PresenceChanged", "PresenceStates", "State", "Watch", "beat", "changed", "leave",
    "listens_on", "subscribe", "sweep_dead", "sweep_own", "visibility_changed", "watch", "write_back",
]

PUBLISH_CHUNK = 500  # changes per batch of publishes (a big sweep is told in parts)


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """Users came online or went offline: ``users`` their states as watchers see them. A
    gateway hands each connection only the states of users it watches."""

    kind: ClassVar[str] = "presence"
    users: tuple[State, ...]

    def wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "users": [state.to_dict() for state in self.users]}


@dataclass(frozen=True)
class Watch:
    """``user`` (a connection of theirs) wants the presence of ``users``, their contacts."""

    user: str
    users: tuple[str, ...]


@dataclass(frozen=True)
class PresenceStates:
    """The presence of the users asked about, as their watchers see it (the ``presence`` reply)."""

    users: list[State]

    def to_dict(self) -> dict[str, Any]:
        return {"users": [state.to_dict() for state in self.users]}


async def watch(services: Services, command: Watch) -> PresenceStates:
    """The present states of ``command.users`` if every one is the user's contact (the caller,
    gateway/presence_operations.py, watches them on its connection). Raises ImflowError
    ``forbidden`` naming those who are not (nothing is to be watched then)."""
    strangers = await presence.strangers(services.redis, command.user, list(command.users))
    if strangers:
        named = ", ".join(strangers)
        raise ImflowError(ErrorCode.FORBIDDEN, f"only your contacts' presence may be watched; not contacts: {named}")
    return PresenceStates(await presence.states(services.redis, list(command.users)))


async def changed(redis: Redis, node: str, changes: list[tuple[str, bool]]) -> None:
    """Connections that came (True) and went (False) on gateway ``node``, as (user, came), in
    order and together (a few round trips however many); the contacts of users who came online
    or went offline hear it."""
    await _publish(redis, await presence.changed(redis, node, changes, now_ms()))


async def visibility_changed(redis: Redis, user: str) -> None:
    """``user`` switched their presence setting (visible | hidden): their watchers get their
    state as they see it now (hidden: offline, never seen)."""
    (state,) = await presence.states(redis, [user])
    await _publish_states(redis, [(state, await contact_store.contacts_of(redis, user))])


async def beat(redis: Redis, node: str, ttl_seconds: float) -> Beat:
    """Gateway ``node`` lives ``ttl_seconds`` more (Redis's clock); says whether it had been
    presumed dead and swept meanwhile (then ``write_back`` what it holds)."""
    return await gateway_liveness.beat(redis, node, ttl_seconds)


async def write_back(redis: Redis, node: str, held: dict[str, int]) -> None:
    """Write gateway ``node``'s connections again (``held``: user -> connections) after a sweep;
    the contacts of users this brings back online hear it."""
    await _publish(redis, await presence.announce(redis, node, held))


async def sweep_own(redis: Redis, node: str) -> int:
    """Clear every entry under gateway ``node``'s name (a former process's, or its own on the way
    out); users left with no connection go offline. Returns the users cleared."""
    swept = await gateway_liveness.sweep_entries(redis, node, now_ms())
    await _publish(redis, swept.offline)
    return swept.users


async def leave(redis: Redis, node: str) -> None:
    """Gateway ``node`` leaves the registry of live gateways for good (after ``sweep_own``)."""
    await gateway_liveness.forget(redis, node)


async def sweep_dead(redis: Redis, node: str) -> dict[str, int]:
    """Sweep the gateways presumed dead, but ``node`` itself; users left with no connection go
    offline, last seen at the sweep. Returns node -> users swept."""
    swept = await gateway_liveness.sweep_dead(redis, me=node, at_ms=now_ms())
    await _publish(redis, [change for done in swept.values() for change in done.offline])
    return {dead: done.users for dead, done in swept.items()}


def listens_on(node: str) -> tuple[str, str]:
    """The pub/sub channels gateway ``node`` listens on: its users' notifications, and orders to
    every gateway (revocations)."""
    return gateway_events.own_channel(node), gateway_events.orders_channel()


async def subscribe(redis: Redis, node: str) -> PubSub:
    """Subscribe to the channels of ``listens_on(node)``: the gateway's own (sharded on a Redis
    Cluster, on the node owning its slot) and the orders to every gateway. Returns the
    redis-py PubSub (read it with ``get_message``); raises redis errors when Redis is away."""
    own, orders = listens_on(node)
    return await redis_client.subscribe(redis, own, orders)


async def _publish(redis: Redis, changes: Iterable[Change | None]) -> None:
    """Tell the contacts of each changed user who is not hidden."""
    await _publish_states(redis, [(c.state, c.contacts) for c in changes if c is not None and not c.hidden])


async def _publish_states(redis: Redis, states: list[tuple[State, Iterable[str]]]) -> None:
    """Each state to the gateways of its user's contacts (one event per user and gateway, naming
    the contacts there), one publish per gateway for each ``PUBLISH_CHUNK`` states."""
    for start in range(0, len(states), PUBLISH_CHUNK):
        chunk = [(state, list(contacts)) for state, contacts in states[start : start + PUBLISH_CHUNK]]
        everyone = sorted({contact for _, contacts in chunk for contact in contacts})
        if not everyone:
            continue
        where = await presence.gateways_by_user(redis, everyone)
        batch = gateway_events.GatewayBatch()
        for state, contacts in chunk:
            by_node: dict[str, list[str]] = defaultdict(list)
            for contact in contacts:
                for node in where.get(contact, ()):
                    by_node[node].append(contact)
            push = PresenceChanged((state,))
            for node, there in by_node.items():
                batch.add(node, there, push)
        await gateway_events.publish(redis, batch)
