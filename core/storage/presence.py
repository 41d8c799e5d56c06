"""Which gateways hold a user's connections, so pushes go only where the user is; and whether
the user is online at all (presence).

Three indexes, all counted per connection: the user's gateways (pushes to one user), each of
their groups' connected members by gateway (a read fan-out push finds a group's online
members with one call instead of one per member), and each gateway's users (where the sweep
of a dead gateway finds the other two's entries: core/storage/gateway_liveness.py).

The user's gateways hash is counted by one script on the user's slot (presence_count.lua),
which says when the user's connections over all gateways go from none to some or back
(``Change``): the moments their contacts are told, and the last-seen time is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..ids import now_ms
from . import gateway_liveness, keys
from .accounts import HIDDEN  # the presence setting that shows the user offline to everyone
from .redis_client import text
from .scripts import Reply, queue_script, reply, run_pipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

@dataclass(frozen=True)
class State:
    """A user's presence as their watchers see it: ``last_seen_ms`` is when their last
    connection closed (Unix ms; None if never). A hidden user is offline with no last-seen time."""

    user: str
    online: bool
    last_seen_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "online": self.online, "last_seen_ms": self.last_seen_ms}


@dataclass(frozen=True)
class Change:
    """``user``'s connections over all gateways went from none to some (``online``) or from some
    to none; ``hidden``: their presence setting hides it; ``contacts``: who may be told."""

    user: str
    online: bool
    hidden: bool
    last_seen_ms: int | None
    contacts: tuple[str, ...]

    @property
    def state(self) -> State:
        return State(self.user, self.online, self.last_seen_ms)


def _queue_count(pipe: Pipeline, user: str, node: str, how: str, at_ms: int = 0, held: int = 0) -> Reply:
    return queue_script(
        pipe, "presence_count", keys=[keys.user_gateways(user), keys.account(user), keys.contacts(user)],
        args=[node, how, at_ms, held],
    )


def _change(user: str, answer: list[Any]) -> Change | None:
    """The ``Change`` a presence_count.lua reply reports, None if the user stayed as they were."""
    if int(answer[0]) == 0:
        return None
    setting, last_seen = text(answer[1]), text(answer[2])
    return Change(
        user, online=int(answer[0]) == 1, hidden=setting == HIDDEN, last_seen_ms=int(last_seen) if last_seen else None,
        contacts=tuple(text(peer) for peer in answer[3:]),
    )


async def _groups_of(redis: Redis, users: list[str]) -> dict[str, list[str]]:
    """The groups of each user (for their online entries in each), in one round trip."""

    def memberships(pipe: Pipeline) -> None:
        for user in users:
            pipe.smembers(keys.user_groups(user))

    _, found = await run_pipeline(redis, memberships)
    return {user: sorted(text(gid) for gid in groups) for user, groups in zip(users, found, strict=True)}


async def connected(redis: Redis, user: str, node: str) -> Change | None:
    """One more connection of ``user`` on ``node``; the ``Change`` if the user came online."""
    return (await changed(redis, node, [(user, True)]))[0]


async def disconnected(redis: Redis, user: str, node: str, at_ms: int | None = None) -> Change | None:
    """One connection fewer of ``user`` on ``node``; the ``Change`` if that was the user's last
    one anywhere (their last-seen time is then ``at_ms``, default now)."""
    return (await changed(redis, node, [(user, False)], at_ms))[0]


async def changed(redis: Redis, node: str, changes: list[tuple[str, bool]], at_ms: int | None = None) -> list[Change | None]:
    """Connections that came (True) and went (False) on ``node``, as (user, came), counted in this
    order in two round trips however many there are (10,000 viewers dropping at once); for each,
    the ``Change`` if its user came online or went offline (last seen ``at_ms``, default now)."""
    at_ms = now_ms() if at_ms is None else at_ms
    gids = await _groups_of(redis, sorted({user for user, _ in changes}))

    def count(pipe: Pipeline) -> list[Reply]:
        counted = []
        for user, came in changes:
            if came:
                counted.append(_queue_count(pipe, user, node, "add"))
                queue_script(pipe, "add_one", keys=[keys.gateway_users(node)], args=[user])
                for gid in gids[user]:
                    queue_script(pipe, "add_one", keys=[keys.group_online(gid)], args=[f"{node}|{user}"])
            else:
                counted.append(_queue_count(pipe, user, node, "lower", at_ms))
                queue_script(pipe, "lower_field", keys=[keys.gateway_users(node)], args=[user])
                for gid in gids[user]:
                    queue_script(pipe, "lower_field", keys=[keys.group_online(gid)], args=[f"{node}|{user}"])
        return counted

    counted, _ = await run_pipeline(redis, count)
    return [_change(user, reply.value) for (user, _), reply in zip(changes, counted, strict=True)]


def queue_drop(pipe: Pipeline, user: str, node: str, at_ms: int) -> Reply:
    """Queue the removal of ``node``'s entry from ``user``'s gateways (a sweep); read its reply
    with ``change_from``: a ``Change`` if the user has no connection left anywhere."""
    return _queue_count(pipe, user, node, "drop", at_ms)


def change_from(user: str, answer: Reply) -> Change | None:
    """The ``Change`` a queued ``queue_drop`` reports (None: the user is still connected elsewhere)."""
    return _change(user, answer.value)


async def gateways_of(redis: Redis, user: str) -> list[str]:
    """The gateways holding the user's connections, but those presumed dead (not swept yet)."""
    def look_up(pipe: Pipeline) -> tuple[Reply, Reply]:
        return queue_gateways_of(pipe, user), gateway_liveness.queue_dead(pipe)

    (held, dead), _ = await run_pipeline(redis, look_up)
    return gateways_from(held.value, gateway_liveness.dead_from(dead.value))


def queue_gateways_of(pipe: Pipeline, user: str) -> Reply:
    """Queue the lookup of the gateways holding ``user``'s connections (read with ``gateways_from``)."""
    pipe.hkeys(keys.user_gateways(user))
    return reply(pipe)


def gateways_from(fields: list[bytes], dead: frozenset[str] = frozenset()) -> list[str]:
    """The gateways of a ``queue_gateways_of`` reply, but those in ``dead``."""
    if not dead:
        return [text(field) for field in fields]
    return [node for node in map(text, fields) if node not in dead]


async def announce(redis: Redis, node: str, held: dict[str, int]) -> list[Change]:
    """Write again every entry of the connections ``node`` holds (user -> connections, 0 for a
    user it holds none of: the entries go), as a gateway does after a sweep took them while it
    was presumed dead, or after a connect or disconnect it could not record. Counts are set, not
    added, so a write-back can be retried.
    Returns the users this brings back online (the sweep had told their contacts otherwise)."""
    users, changes = sorted(held), []
    for start in range(0, len(users), gateway_liveness.SWEEP_CHUNK):
        chunk = users[start : start + gateway_liveness.SWEEP_CHUNK]
        groups = await _groups_of(redis, chunk)

        def write(pipe: Pipeline, chunk: list[str] = chunk, groups: dict[str, list[str]] = groups) -> list[Reply]:
            counted = []
            for user in chunk:
                counted.append(_queue_count(pipe, user, node, "set", held=held[user]))
                fields = [(keys.gateway_users(node), user)]
                fields += [(keys.group_online(gid), f"{node}|{user}") for gid in groups[user]]
                for key, field in fields:  # none held: the entry goes, as a disconnect takes it
                    pipe.hset(key, field, held[user]) if held[user] > 0 else pipe.hdel(key, field)
            return counted

        counted, _ = await run_pipeline(redis, write)
        changes += [change for user, answer in zip(chunk, counted, strict=True) if (change := _change(user, answer.value))]
    return changes


async def states(redis: Redis, users: list[str]) -> list[State]:
    """Each user's presence as watchers see it (online: a connection on a gateway not presumed
    dead; hidden users look offline, never seen). One round trip."""
    def look_up(pipe: Pipeline) -> tuple[list[tuple[Reply, Reply]], Reply]:
        found = []
        for user in users:
            pipe.hmget(keys.account(user), ["presence", "last_seen_ms"])
            found.append((reply(pipe), queue_gateways_of(pipe, user)))
        return found, gateway_liveness.queue_dead(pipe)

    (found, dead), _ = await run_pipeline(redis, look_up)
    gone = gateway_liveness.dead_from(dead.value)
    out = []
    for user, (account, held) in zip(users, found, strict=True):
        setting, last_seen = account.value
        if setting is not None and text(setting) == HIDDEN:
            out.append(State(user, online=False, last_seen_ms=None))
        else:
            online = bool(gateways_from(held.value, gone))
            out.append(State(user, online, int(last_seen) if last_seen is not None else None))
    return out


async def strangers(redis: Redis, user: str, peers: list[str]) -> list[str]:
    """Those of ``peers`` who are not ``user``'s contacts."""
    if not peers:
        return []
    since = await redis.hmget(keys.contacts(user), peers)
    return [peer for peer, edge in zip(peers, since, strict=True) if edge is None]


async def gateways_by_user(redis: Redis, users: list[str]) -> dict[str, list[str]]:
    """The live gateways holding each user's connections (users connected nowhere left out).
    One round trip."""
    def look_up(pipe: Pipeline) -> tuple[list[Reply], Reply]:
        return [queue_gateways_of(pipe, user) for user in users], gateway_liveness.queue_dead(pipe)

    (held, dead), _ = await run_pipeline(redis, look_up)
    gone = gateway_liveness.dead_from(dead.value)
    found = {user: gateways_from(nodes.value, gone) for user, nodes in zip(users, held, strict=True)}
    return {user: nodes for user, nodes in found.items() if nodes}
