"""The Redis state of the social graph: contact edges, contact requests both ways, blocks and
first-message marks (keys.contacts, requests_in, requests_out, blocked, wrote_to), and the
send checks that read them (those of the sends that arrive in one event-loop tick run together
in one pipeline: ``TickBatch``).

Every script touches one user's keys only (one ``{u:<user>}`` hash tag, so Redis Cluster can
run it). A change between two users is two steps, one per side, each idempotent; core/contacts.py
writes the *other* user's side first and the acting user's side last, so until the change is
complete the actor's side still shows what it was, and the actor's retry does it all again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from . import keys
from .redis_client import text
from .scripts import Reply, TickBatch, queue_script, reply, run_each, run_pipeline, script

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

Part = Literal["contact", "in", "out", "wrote_to"]  # what ``unlink`` may take away


@dataclass(frozen=True)
class PendingRequest:
    """A contact request waiting for an answer: its note and when it was made (Unix ms)."""

    note: str
    at_ms: int

    def encoded(self) -> bytes:
        return orjson.dumps({"note": self.note, "at_ms": self.at_ms})

    @classmethod
    def decoded(cls, stored: bytes | str) -> PendingRequest:
        fields = orjson.loads(stored)
        return cls(str(fields.get("note", "")), int(fields.get("at_ms", 0)))


@dataclass(frozen=True)
class Side:
    """One user's side of their relation with a peer, read at one moment.

    ``status``: the account's (None: no account); ``contact_since``: the edge's Unix ms (None:
    no edge on this side); ``incoming`` / ``outgoing``: the peer's request to this user / this
    user's to the peer; ``blocked_at``: when this user blocked the peer (None: not blocked);
    then how many contacts, incoming and outgoing requests and blocked users this user has.
    """

    status: str | None
    contact_since: int | None
    incoming: PendingRequest | None
    outgoing: PendingRequest | None
    blocked_at: int | None
    contacts: int
    incoming_count: int
    outgoing_count: int
    blocked_count: int


@dataclass(frozen=True)
class Written:
    """What a side's write found: ``outcome`` is ``requested`` (the request is written),
    ``accepted`` (crossed requests became an edge here), ``contact`` (an edge was there
    already), ``linked`` (the edge is written) or ``blocked`` (this side blocks the peer:
    nothing written); ``since_ms`` is the edge's time when there is one."""

    outcome: str
    since_ms: int | None = None


@dataclass(frozen=True)
class BlockWritten:
    """What ``block`` did: ``outcome`` is ``blocked``, ``conflict`` (blocked already) or
    ``full`` (at the limit, nothing written); for ``blocked``, what the block took away on the
    blocker's side."""

    outcome: str
    had_contact: bool = False
    had_incoming: bool = False
    had_outgoing: bool = False


def _relation_keys(user: str) -> list[str]:
    return [keys.contacts(user), keys.requests_in(user), keys.requests_out(user), keys.blocked(user)]


def _optional_int(value: bytes | None) -> int | None:
    return int(value) if value is not None else None


def _side(reply: list) -> Side:
    status, since, incoming, outgoing, blocked_at, contacts, n_in, n_out, n_blocked = reply
    return Side(
        text(status) if status else None,
        _optional_int(since or None),
        PendingRequest.decoded(incoming) if incoming else None,
        PendingRequest.decoded(outgoing) if outgoing else None,
        _optional_int(blocked_at or None),
        int(contacts), int(n_in), int(n_out), int(n_blocked),
    )


def _queue_side(pipe: Pipeline, user: str, peer: str) -> Reply:
    return queue_script(pipe, "contact_view", keys=[keys.account(user), *_relation_keys(user)], args=[peer])


async def sides(redis: Redis, user: str, peer: str) -> tuple[Side, Side]:
    """(``user``'s side about ``peer``, ``peer``'s side about ``user``), in one round trip."""

    def look(pipe: Pipeline) -> tuple[Reply, Reply]:
        return _queue_side(pipe, user, peer), _queue_side(pipe, peer, user)

    (mine, theirs), _ = await run_pipeline(redis, look)
    return _side(mine.value), _side(theirs.value)


def _written(reply: list) -> Written:
    outcome, *since = reply
    return Written(text(outcome), int(since[0]) if since else None)


async def write_request(
    redis: Redis, user: str, peer: str, direction: Literal["in", "out"], request: PendingRequest, since_ms: int
) -> Written:
    """Write ``user``'s side of a request: ``in`` (the peer asks the user) or ``out`` (the user
    asks the peer). Nothing is written if the user blocks the peer (``blocked``) or has them as
    a contact (``contact``); if the opposite request is pending, the two become contacts on this
    side with ``since_ms`` (``accepted``)."""
    found = await script(redis, "contact_request")(
        keys=_relation_keys(user), args=[peer, direction, request.encoded(), since_ms]
    )
    return _written(found)


async def link(redis: Redis, user: str, peer: str, since_ms: int) -> Written:
    """Make ``peer`` a contact on ``user``'s side (no request left either way); an edge there
    already keeps the earlier of its time and ``since_ms``. ``blocked`` (nothing written) if the
    user blocks the peer."""
    return _written(await script(redis, "contact_link")(keys=_relation_keys(user), args=[peer, since_ms]))


async def unlink(redis: Redis, user: str, peer: str, *parts: Part) -> int:
    """Take ``parts`` of ``user``'s relation with ``peer`` away: the contact edge, the peer's
    request (``in``), the user's request (``out``), the first-message mark. Returns how many
    of them were there."""
    where = [keys.contacts(user), keys.requests_in(user), keys.requests_out(user), keys.wrote_to(user)]
    return int(await script(redis, "contact_unlink")(keys=where, args=[peer, *parts]))


async def block(redis: Redis, user: str, peer: str, at_ms: int, most: int) -> BlockWritten:
    """``user`` blocks ``peer`` (at most ``most`` blocked users): the block, and on the user's
    side no edge, no request either way, no first-message mark."""
    found = await script(redis, "contact_block")(
        keys=[*_relation_keys(user), keys.wrote_to(user)], args=[peer, at_ms, most]
    )
    outcome = text(found[0])
    if outcome != "blocked":
        return BlockWritten(outcome)
    return BlockWritten(outcome, bool(found[1]), bool(found[2]), bool(found[3]))


async def blocks(redis: Redis, user: str, peer: str) -> bool:
    """Does ``user`` block ``peer`` now?"""
    return bool(await redis.hexists(keys.blocked(user), peer))


async def unblock(redis: Redis, user: str, peer: str) -> bool:
    """``user`` no longer blocks ``peer``; False if they did not."""
    return bool(await redis.hdel(keys.blocked(user), peer))


# -- lists


async def contacts_of(redis: Redis, user: str) -> dict[str, int]:
    """The user's contacts: peer -> since_ms."""
    return {text(peer): int(since) for peer, since in (await redis.hgetall(keys.contacts(user))).items()}


async def requests_of(redis: Redis, user: str) -> tuple[dict[str, PendingRequest], dict[str, PendingRequest]]:
    """(requests the user received, requests the user sent), each peer -> request; one round trip."""

    def look(pipe: Pipeline) -> tuple[Reply, Reply]:
        pipe.hgetall(keys.requests_in(user))
        incoming = reply(pipe)
        pipe.hgetall(keys.requests_out(user))
        return incoming, reply(pipe)

    (incoming, outgoing), _ = await run_pipeline(redis, look)
    return (
        {text(peer): PendingRequest.decoded(stored) for peer, stored in incoming.value.items()},
        {text(peer): PendingRequest.decoded(stored) for peer, stored in outgoing.value.items()},
    )


async def blocked_by(redis: Redis, user: str) -> dict[str, int]:
    """The users ``user`` blocks: peer -> at_ms."""
    return {text(peer): int(at) for peer, at in (await redis.hgetall(keys.blocked(user))).items()}


# -- the checks of a send and of a group addition


def _queue_recipient(pipe: Pipeline, recipient: str, sender: str, registered: bool, privacy: bool) -> Reply:
    return queue_script(
        pipe,
        "direct_recipient",
        keys=[keys.account(recipient), keys.blocked(recipient), keys.contacts(recipient), keys.wrote_to(recipient)],
        args=[sender, "1" if registered else "0", "1" if privacy else "0"],
    )


def _queue_direct(pipe: Pipeline, item: tuple[str, str, bool]) -> None:
    sender, recipient, registered = item
    _queue_recipient(pipe, recipient, sender, registered, privacy=True)
    queue_script(
        pipe,
        "direct_sender",
        keys=[keys.account(sender), keys.blocked(sender), keys.contacts(sender), keys.wrote_to(sender)],
        args=[recipient],
    )


def _verdict(replies: list[Any]) -> tuple[str, str]:
    """(the send's verdict, the sender side's answer) from the two scripts' replies."""
    verdict, own = text(replies[0]), text(replies[1])
    if own == "blocked" and verdict in ("ok", "contacts_only"):  # rules 1 and 2 come before a block
        verdict = "blocked"
    return verdict, own


async def _check_many(redis: Redis, items: list[tuple[str, str, bool]]) -> list[tuple[str, bool] | Exception]:
    """``check_direct``'s answers for many sends, in order, as if made one after the other.

    One pipeline for all of them, but a send whose reverse (its recipient writing to its
    sender) is earlier in the batch waits for a pipeline after it, and so do the later sends
    between those two: the earlier send's mark, taken back if it was refused, would otherwise
    decide this one's privacy check. Refused sends take their marks back in one more pipeline,
    before the next sends run.
    """
    out: list[tuple[str, bool] | Exception] = [ValueError("unanswered")] * len(items)
    todo = list(range(len(items)))
    while todo:
        now: list[int] = []
        pairs: set[tuple[str, str]] = set()
        waiting: set[frozenset[str]] = set()  # two users with a send that waits: their next ones wait too
        later = []
        for i in todo:
            sender, recipient, _ = items[i]
            users = frozenset((sender, recipient))
            if (recipient, sender) in pairs or users in waiting:
                later.append(i)
                waiting.add(users)
            else:
                now.append(i)
                pairs.add((sender, recipient))
        found = await run_each(redis, [items[i] for i in now], _queue_direct)
        undo = []
        for i, replies in zip(now, found, strict=True):
            if isinstance(replies, Exception):
                out[i] = replies
                continue
            verdict, own = _verdict(replies)
            if verdict != "ok" and own == "marked":
                undo.append(items[i][:2])
            out[i] = (verdict, verdict == "ok" and own == "marked")
        if undo:
            await run_each(redis, undo, _queue_unmark)
        todo = later
    return out


def _queue_unmark(pipe: Pipeline, pair: tuple[str, str]) -> None:
    pipe.srem(keys.wrote_to(pair[0]), pair[1])


def _direct_batch(redis: Redis) -> TickBatch[tuple[str, str, bool], tuple[str, bool]]:
    """This client's batch of send checks (one per client: a client belongs to one loop)."""
    batch = redis.__dict__.get("_imflow_direct_checks")
    if batch is None:
        batch = redis.__dict__["_imflow_direct_checks"] = TickBatch(lambda items: _check_many(redis, items))
    return batch


async def check_direct(redis: Redis, sender: str, recipient: str, registered: bool) -> tuple[str, bool]:
    """May ``sender`` message ``recipient`` one-to-one? (``ok`` or the refusal's error code:
    ``not_found`` with ``registered`` accounts, ``user_deactivated``, ``blocked``,
    ``contacts_only``; whether this send made a first-message mark): a script on each user's
    slot. The checks of the sends that arrive in one event-loop tick go to Redis together, in
    one pipeline (``TickBatch``), each answered as if it had been made alone.

    A sender writing to a non-contact marks them (they may reply, should the sender take
    messages from contacts only); a refused send takes a mark it made back (a second round
    trip, on refusals only), and so does a caller whose send fails later (``unmark``).
    Raises what redis-py raises when Redis is unavailable (every send of the batch then).
    """
    return await _direct_batch(redis).call((sender, recipient, registered))


async def may_write(redis: Redis, sender: str, recipient: str, registered: bool) -> str:
    """What ``check_direct`` would answer ``sender`` writing to ``recipient`` now (``ok`` or the
    refusal's error code), read only: no first-message mark is made. One round trip."""

    def look(pipe: Pipeline) -> tuple[Reply, Reply]:
        theirs = _queue_recipient(pipe, recipient, sender, registered, privacy=True)
        pipe.hexists(keys.blocked(sender), recipient)
        return theirs, reply(pipe)

    (theirs, mine), _ = await run_pipeline(redis, look)
    verdict = text(theirs.value)
    return "blocked" if verdict in ("ok", "contacts_only") and mine.value else verdict


async def unmark(redis: Redis, sender: str, recipient: str) -> None:
    """Take back the first-message mark of a send that did not go."""
    await redis.srem(keys.wrote_to(sender), recipient)


async def check_additions(redis: Redis, actor: str, users: list[str], registered: bool) -> dict[str, str]:
    """For each user ``actor`` would add to a group: ``ok`` or the refusal's error code
    (``not_found`` with ``registered`` accounts, ``user_deactivated``, ``blocked`` either way),
    in one round trip."""

    def look(pipe: Pipeline) -> tuple[dict[str, Reply], Reply | None]:
        theirs = {user: _queue_recipient(pipe, user, actor, registered, privacy=False) for user in users}
        if not users:
            return theirs, None
        pipe.hmget(keys.blocked(actor), users)
        return theirs, reply(pipe)

    (theirs, mine), _ = await run_pipeline(redis, look)
    blocked_by_actor = mine.value if mine is not None else []
    out = {}
    for user, blocked_at in zip(users, blocked_by_actor, strict=True):
        verdict = text(theirs[user].value)
        out[user] = "blocked" if verdict == "ok" and blocked_at is not None else verdict
    return out
