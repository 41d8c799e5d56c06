"""The presence service: where each user's devices are connected, kept by the gateway that holds
them, and cleared when a gateway dies (its heartbeat stops; any live gateway sweeps it).

What a gateway may do about its own presence and liveness, and nothing else: the indexes and
the registry live in core/storage/presence.py and core/storage/gateway_liveness.py. Every
function raises Redis errors as they come; each change is idempotent, so a caller may retry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .storage import gateway_events, gateway_liveness, presence
from .storage.gateway_liveness import Beat

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "Beat", "beat", "connected", "disconnected", "leave", "listens_on", "sweep_dead", "sweep_own", "write_back",
]


async def connected(redis: Redis, user: str, node: str) -> None:
    """One more connection of ``user`` on gateway ``node``."""
    await presence.connected(redis, user, node)


async def disconnected(redis: Redis, user: str, node: str) -> None:
    """One connection fewer of ``user`` on gateway ``node``."""
    await presence.disconnected(redis, user, node)


async def beat(redis: Redis, node: str, ttl_seconds: float) -> Beat:
    """Gateway ``node`` lives ``ttl_seconds`` more (Redis's clock); says whether it had been
    presumed dead and swept meanwhile (then ``write_back`` what it holds)."""
    return await gateway_liveness.beat(redis, node, ttl_seconds)


async def write_back(redis: Redis, node: str, held: dict[str, int]) -> None:
    """Write gateway ``node``'s connections again (``held``: user -> connections) after a sweep."""
    await presence.announce(redis, node, held)


async def sweep_own(redis: Redis, node: str) -> int:
    """Clear every entry under gateway ``node``'s name (a former process's, or its own on the way
    out). Returns the users cleared."""
    return await gateway_liveness.sweep(redis, node)


async def leave(redis: Redis, node: str) -> None:
    """Gateway ``node`` leaves the registry of live gateways for good (after ``sweep_own``)."""
    await gateway_liveness.forget(redis, node)


async def sweep_dead(redis: Redis, node: str) -> dict[str, int]:
    """Sweep the gateways presumed dead, but ``node`` itself: node -> users swept."""
    return await gateway_liveness.sweep_dead(redis, me=node)


def listens_on(node: str) -> tuple[str, str]:
    """The pub/sub channels gateway ``node`` listens on: its users' notifications, and orders to
    every gateway (revocations)."""
    return gateway_events.own_channel(node), gateway_events.orders_channel()
