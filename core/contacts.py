"""Contacts and blocking, the service: contact requests (send with a note, accept, decline,
cancel), removal, blocks, the lists, and the checks other services make before a one-to-one
message or a group addition (docs/protocol.md, "Contacts", "Blocking", "Privacy").

Each change takes a typed command, writes both users' sides (core/storage/contacts.py: the
other user's side first, the actor's last, so the actor's retry completes a half-done change),
records itself in the archive (core/storage/social_records.py) and tells the actor's other
connections and the other user (``ContactChanged``; a blocked user is told nothing). Without a
transaction across the two sides, a request or an acceptance racing the other user's block
reads that block again once it has written both sides (and undoes itself), and a block sweeps
the other side again once it holds: no request or edge outlives a block, whatever the order.

Errors (ImflowError): ``bad_frame`` (oneself), ``not_found`` (no account with registered
accounts; no such request, contact or block), ``user_deactivated``, ``blocked``, ``conflict``
(exists already), ``forbidden`` (past a limit), ``contacts_only`` (a send).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ErrorCode, ImflowError
from .storage import accounts as account_store
from .storage import contacts as store
from .storage import gateway_events, social_records
from .storage.contacts import PendingRequest

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .services import Services
    from .settings import Settings


# -- commands


@dataclass(frozen=True)
class Change:
    """``user`` changes their relation with ``peer``, on connection ``origin`` (its reply
    answers it; the user's other connections are told)."""

    user: str
    peer: str
    origin: str = ""


@dataclass(frozen=True)
class Request(Change):
    """Ask ``peer`` to become a contact, with a ``note`` (≤ 500 chars, the frame's limit);
    accepts the peer's own request if they asked first."""

    note: str = ""


@dataclass(frozen=True)
class Accept(Change):
    """Accept ``peer``'s request."""


@dataclass(frozen=True)
class Decline(Change):
    """Decline ``peer``'s request."""


@dataclass(frozen=True)
class Cancel(Change):
    """Withdraw the user's request to ``peer``."""


@dataclass(frozen=True)
class Remove(Change):
    """End the contact, on both sides."""


@dataclass(frozen=True)
class Block(Change):
    """Block ``peer``: no one-to-one messages, contact requests or group additions between them."""


@dataclass(frozen=True)
class Unblock(Change):
    """No longer block ``peer`` (restores nothing the block ended)."""


@dataclass(frozen=True)
class ListContacts:
    user: str


@dataclass(frozen=True)
class ListRequests:
    user: str


@dataclass(frozen=True)
class ListBlocked:
    user: str


# -- results and notifications


@dataclass(frozen=True)
class ContactEvent:
    """A change as one user sees it: ``event`` (request_sent, request_received, accepted,
    declined, cancelled, removed, blocked, unblocked) concerning ``user`` (the other one);
    ``note`` and ``at_ms`` for a request, ``since_ms`` for an acceptance, ``at_ms`` for a block.
    The reply to every change, and the push to the others it concerns."""

    event: str
    user: str
    note: str | None = None
    at_ms: int | None = None
    since_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields the event has (docs/protocol.md, the ``contact`` frame)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


@dataclass(frozen=True, slots=True)
class ContactChanged:
    """A contact change for a user's connections (the frame ``contact``, as the reply)."""

    kind: ClassVar[str] = "contact"
    change: ContactEvent

    def wire(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.change.to_dict()}


@dataclass(frozen=True)
class Contact:
    """One contact with their profile (None where unset)."""

    user: str
    since_ms: int
    display_name: str | None
    avatar_url: str | None
    status: str


@dataclass(frozen=True)
class ContactList:
    contacts: list[Contact] = field(default_factory=list)  # by user id


@dataclass(frozen=True)
class IncomingRequest:
    user: str
    note: str
    at_ms: int
    display_name: str | None
    avatar_url: str | None


@dataclass(frozen=True)
class OutgoingRequest:
    user: str
    note: str
    at_ms: int


@dataclass(frozen=True)
class RequestLists:
    """Pending requests by user id: those the user received (with the asker's profile) and sent."""

    incoming: list[IncomingRequest] = field(default_factory=list)
    outgoing: list[OutgoingRequest] = field(default_factory=list)


@dataclass(frozen=True)
class BlockedUser:
    user: str
    at_ms: int


@dataclass(frozen=True)
class BlockedList:
    users: list[BlockedUser] = field(default_factory=list)  # by user id



# -- the target checks


def _not_oneself(command: Change) -> None:
    if command.peer == command.user:
        raise ImflowError(ErrorCode.BAD_FRAME, "name another user, not yourself")


def _blocked() -> ImflowError:
    # the same answer whoever blocks whom: the sender learns no more than that
    return ImflowError(ErrorCode.BLOCKED, "one of you blocks the other")


# the error of each refusal of the checks, for the user it names
_REFUSALS = {
    "not_found": lambda user: ImflowError(ErrorCode.NOT_FOUND, f"no user {user!r}"),
    "user_deactivated": lambda user: ImflowError(ErrorCode.USER_DEACTIVATED, f"{user} is deactivated"),
    "blocked": lambda user: _blocked(),
    "contacts_only": lambda user: ImflowError(ErrorCode.CONTACTS_ONLY, f"{user} takes one-to-one messages from contacts only"),
}


def _require_account(services: Services, peer: str, status: str | None) -> None:
    """The peer's account may take part: ``not_found`` (no account, registered accounts) or
    ``user_deactivated`` otherwise."""
    if status is None and services.settings.accounts == "registered":
        raise _REFUSALS["not_found"](peer)
    if status == account_store.DEACTIVATED:
        raise _REFUSALS["user_deactivated"](peer)


def _refuse_blocks(mine: store.Side, theirs: store.Side) -> None:
    if mine.blocked_at is not None or theirs.blocked_at is not None:
        raise _blocked()


def _refuse_full(count: int, most: int, what: str) -> None:
    """``forbidden`` if one more of ``what`` would pass the limit ``most``."""
    if count >= most:
        raise ImflowError(ErrorCode.FORBIDDEN, f"at most {most} {what}")


async def _told(services: Services, command: Change, mine: ContactEvent, theirs: ContactEvent | None) -> None:
    """The actor's other connections hear ``mine``; the peer ``theirs`` (None: nothing)."""
    redis = services.redis
    told = [gateway_events.notify_user(redis, command.user, ContactChanged(mine), skip=command.origin)]
    if theirs is not None:
        told.append(gateway_events.notify_user(redis, command.peer, ContactChanged(theirs)))
    await asyncio.gather(*told)


async def _become_contacts(services: Services, command: Change, now: int) -> int:
    """Write the edge on the peer's side, then the actor's; the edge's since_ms. A block of
    either that comes in between undoes both (``blocked``)."""
    redis, me, peer = services.redis, command.user, command.peer
    theirs = await store.link(redis, peer, me, now)
    if theirs.outcome == "blocked":  # they blocked the actor a moment ago
        raise _blocked()
    since = theirs.since_ms or now
    mine = await store.link(redis, me, peer, since)
    since = mine.since_ms or since
    # a block of the peer's after their side was linked: its sweep may have passed the actor's
    # side before this link; the actor's own block refused the link
    if mine.outcome == "blocked" or await store.blocks(redis, peer, me):
        await store.unlink(redis, peer, me, "contact")
        await store.unlink(redis, me, peer, "contact")
        raise _blocked()
    return since


async def _accepted(services: Services, command: Change, since: int) -> ContactEvent:
    """Record and announce that the actor and the peer are contacts since ``since``."""
    now = services.clock()
    await social_records.record_contact(services, command.user, command.peer, "accepted", "", now)
    mine = ContactEvent("accepted", command.peer, since_ms=since)
    await _told(services, command, mine, ContactEvent("accepted", command.user, since_ms=since))
    return mine


# -- changes


async def request(services: Services, command: Request) -> ContactEvent:
    """Ask the peer; if they asked first, the two become contacts (``accepted``).

    Raises ``bad_frame`` (oneself), ``not_found``, ``user_deactivated``, ``blocked`` (either
    blocks the other), ``conflict`` (contacts already, or the user's request is pending),
    ``forbidden`` (the user's pending requests, or the peer's, at their limit).
    """
    _not_oneself(command)
    s, redis, me, peer = services.settings, services.redis, command.user, command.peer
    mine, theirs = await store.sides(redis, me, peer)
    _require_account(services, peer, theirs.status)
    _refuse_blocks(mine, theirs)
    if mine.contact_since is not None:
        raise ImflowError(ErrorCode.CONFLICT, f"{peer} is your contact already")
    if mine.outgoing is not None:
        raise ImflowError(ErrorCode.CONFLICT, f"your request to {peer} is pending")
    now = services.clock()
    if mine.incoming is not None:  # they asked first: this answers it
        _refuse_full(max(mine.contacts, theirs.contacts), s.contacts_max, "contacts per user")
        return await _accepted(services, command, await _become_contacts(services, command, now))
    _refuse_full(mine.outgoing_count, s.contact_requests_max, "pending requests of yours")
    _refuse_full(theirs.incoming_count, s.contact_requests_max, f"pending requests to {peer}")
    asked = PendingRequest(command.note, now)
    written = await store.write_request(redis, peer, me, "in", asked, now)
    if written.outcome == "contact" and (await store.sides(redis, me, peer))[0].contact_since is None:
        # an edge on the peer's side and, read after it, none on the user's: the peer's removal
        # of this contact, in flight or cut half-way (a removal unlinks the other side first,
        # while whatever makes an edge links the other side first: had the peer just accepted,
        # the user's side would show it by now). Finish the removal: a request must not re-make
        # a contact without the peer's consent
        await store.unlink(redis, peer, me, "contact")
        written = await store.write_request(redis, peer, me, "in", asked, now)
    if written.outcome == "blocked":
        raise _blocked()
    if written.outcome == "requested":
        written = await store.write_request(redis, me, peer, "out", asked, now)
        # the user blocked the peer a moment ago (the write was refused), or the peer did after
        # their side was written (their block's sweep may have passed the user's side before it)
        if written.outcome == "blocked" or (written.outcome == "requested" and await store.blocks(redis, peer, me)):
            await store.unlink(redis, peer, me, "in")
            await store.unlink(redis, me, peer, "out")
            raise _blocked()
    if written.outcome != "requested":
        # the two asked each other at once (or the peer accepted meanwhile): both sides contacts
        return await _accepted(services, command, await _become_contacts(services, command, written.since_ms or now))
    await social_records.record_contact(services, me, peer, "requested", command.note, now)
    mine_event = ContactEvent("request_sent", peer, note=command.note, at_ms=now)
    await _told(services, command, mine_event, ContactEvent("request_received", me, note=command.note, at_ms=now))
    return mine_event


async def accept(services: Services, command: Accept) -> ContactEvent:
    """Accept the peer's request: contacts on both sides, no request left either way. If the
    user's side has the edge but the peer's not (an acceptance cut half-way), completes it.

    Raises ``bad_frame``, ``not_found`` (no request from the peer), ``user_deactivated``,
    ``blocked``, ``forbidden`` (either at the contacts limit).
    """
    _not_oneself(command)
    mine, theirs = await store.sides(services.redis, command.user, command.peer)
    half_done = mine.contact_since is not None and theirs.contact_since is None
    if mine.incoming is None and not half_done:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no request from {command.peer}")
    _require_account(services, command.peer, theirs.status)
    _refuse_blocks(mine, theirs)
    if not half_done:
        _refuse_full(max(mine.contacts, theirs.contacts), services.settings.contacts_max, "contacts per user")
    since = await _become_contacts(services, command, mine.contact_since or services.clock())
    return await _accepted(services, command, since)


async def decline(services: Services, command: Decline) -> ContactEvent:
    """Decline the peer's request. Raises ``bad_frame``, ``not_found`` (no request from them)."""
    _not_oneself(command)
    mine, _ = await store.sides(services.redis, command.user, command.peer)
    if mine.incoming is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no request from {command.peer}")
    return await _ended(services, command, "declined", ("out", "in"))


async def cancel(services: Services, command: Cancel) -> ContactEvent:
    """Withdraw the user's request. Raises ``bad_frame``, ``not_found`` (no request to them)."""
    _not_oneself(command)
    mine, _ = await store.sides(services.redis, command.user, command.peer)
    if mine.outgoing is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no request of yours to {command.peer}")
    return await _ended(services, command, "cancelled", ("in", "out"))


async def remove(services: Services, command: Remove) -> ContactEvent:
    """End the contact on both sides. Raises ``bad_frame``, ``not_found`` (not a contact)."""
    _not_oneself(command)
    mine, _ = await store.sides(services.redis, command.user, command.peer)
    if mine.contact_since is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"{command.peer} is not your contact")
    return await _ended(services, command, "removed", ("contact", "contact"))


async def _ended(services: Services, command: Change, event: str, parts: tuple[store.Part, store.Part]) -> ContactEvent:
    """Take ``parts`` (the peer's side's, the user's side's) away, record and announce it."""
    redis, me, peer = services.redis, command.user, command.peer
    await store.unlink(redis, peer, me, parts[0])
    await store.unlink(redis, me, peer, parts[1])
    await social_records.record_contact(services, me, peer, event, "", services.clock())
    mine = ContactEvent(event, peer)
    await _told(services, command, mine, ContactEvent(event, me))
    return mine


async def block(services: Services, command: Block) -> ContactEvent:
    """Block the peer: ends the contact and the requests between them, both ways, silently for
    the peer. Raises ``bad_frame``, ``not_found``, ``user_deactivated``, ``conflict`` (blocked
    already), ``forbidden`` (at the limit of blocked users)."""
    _not_oneself(command)
    s, redis, me, peer = services.settings, services.redis, command.user, command.peer
    mine, theirs = await store.sides(redis, me, peer)
    _require_account(services, peer, theirs.status)
    if mine.blocked_at is not None:
        raise ImflowError(ErrorCode.CONFLICT, f"you block {peer} already")
    _refuse_full(mine.blocked_count, s.blocked_max, "blocked users")
    now = services.clock()
    ended: tuple[store.Part, ...] = ("contact", "in", "out", "wrote_to")
    await store.unlink(redis, peer, me, *ended)  # first: a retry after a crash completes this
    written = await store.block(redis, me, peer, now, s.blocked_max)
    if written.outcome == "conflict":
        raise ImflowError(ErrorCode.CONFLICT, f"you block {peer} already")
    if written.outcome == "full":
        raise ImflowError(ErrorCode.FORBIDDEN, f"at most {s.blocked_max} blocked users")
    # again, now that the block holds: a request or acceptance of the peer's that wrote the
    # peer's side after the first sweep finds the block and undoes itself, or is swept here
    await store.unlink(redis, peer, me, *ended)
    await social_records.record_block(services, me, peer, "blocked", now)
    # the edge and requests the block ended, so the archive's graph ends them too
    for had, kind in ((written.had_contact, "removed"), (written.had_incoming, "declined"), (written.had_outgoing, "cancelled")):
        if had:
            await social_records.record_contact(services, me, peer, kind, "", now)
    mine_event = ContactEvent("blocked", peer, at_ms=now)
    await _told(services, command, mine_event, None)
    return mine_event


async def unblock(services: Services, command: Unblock) -> ContactEvent:
    """No longer block the peer (the peer is told nothing). Raises ``bad_frame``, ``not_found``
    (not blocked)."""
    _not_oneself(command)
    if not await store.unblock(services.redis, command.user, command.peer):
        raise ImflowError(ErrorCode.NOT_FOUND, f"you do not block {command.peer}")
    await social_records.record_block(services, command.user, command.peer, "unblocked", services.clock())
    mine = ContactEvent("unblocked", command.peer)
    await _told(services, command, mine, None)
    return mine


# -- lists


async def contacts(services: Services, query: ListContacts) -> ContactList:
    """The user's contacts with their profiles, by user id (two round trips)."""
    edges = await store.contacts_of(services.redis, query.user)
    profiles = await _profiles(services, sorted(edges))
    return ContactList([Contact(peer, edges[peer], p.display_name, p.avatar_url, p.status) for peer, p in profiles.items()])


async def _profiles(services: Services, users: list[str]) -> dict[str, account_store.Account]:
    """Each user's account, in the order given (one round trip); no account shows as an active
    one with nothing set (a user of accounts=open who never signed in)."""
    found = await account_store.accounts_of(services.redis, users)
    return {user: account or account_store.Account(user, account_store.ACTIVE) for user, account in found.items()}


async def requests(services: Services, query: ListRequests) -> RequestLists:
    """The user's pending requests both ways, by user id; incoming with the asker's profile."""
    incoming, outgoing = await store.requests_of(services.redis, query.user)
    profiles = await _profiles(services, sorted(incoming))
    return RequestLists(
        [
            IncomingRequest(peer, incoming[peer].note, incoming[peer].at_ms, profile.display_name, profile.avatar_url)
            for peer, profile in profiles.items()
        ],
        [OutgoingRequest(peer, outgoing[peer].note, outgoing[peer].at_ms) for peer in sorted(outgoing)],
    )


async def blocked(services: Services, query: ListBlocked) -> BlockedList:
    """The users the user blocks, by user id."""
    found = await store.blocked_by(services.redis, query.user)
    return BlockedList([BlockedUser(peer, found[peer]) for peer in sorted(found)])


# -- the checks of other services


async def check_direct(services: Services, sender: str, recipient: str) -> bool:
    """May ``sender`` message ``recipient`` one-to-one (the check of every such send; the checks
    of the sends that arrive in one event-loop tick share one round trip)? In order: the
    recipient has no account (registered accounts) -> ``not_found``; is deactivated ->
    ``user_deactivated``; either blocks the other -> ``blocked``; takes messages from contacts
    only, and the sender is none and was not written to first -> ``contacts_only``.
    A sender writing to a non-contact lets them reply; True if this send made that mark (undo
    it with ``first_write_undone`` if the send does not go)."""
    registered = services.settings.accounts == "registered"
    verdict, marked = await store.check_direct(services.redis, sender, recipient, registered)
    if verdict != "ok":
        raise _REFUSALS[verdict](recipient)
    return marked


async def may_write(redis: Redis, settings: Settings, sender: str, recipient: str) -> bool:
    """Whether a one-to-one message from ``sender`` to ``recipient`` would pass ``check_direct``
    now (no block either way, the recipient's privacy lets it through, the recipient exists and
    is active), read only: it makes no first-message mark. True for oneself. One round trip;
    raises what redis-py raises when Redis is unavailable. For plugins that let a user put
    something before another outside a message (an upload, a typing notice)."""
    if sender == recipient:
        return True
    return await store.may_write(redis, sender, recipient, settings.accounts == "registered") == "ok"


async def first_write_undone(services: Services, sender: str, recipient: str) -> None:
    """A send that ``check_direct`` passed, and marked (it returned True), did not go after all
    (a plugin refused it): the recipient may not reply on its account."""
    await store.unmark(services.redis, sender, recipient)


async def check_additions(services: Services, actor: str, users: list[str]) -> None:
    """May ``actor`` add ``users`` to a group (one round trip)? Raises for the first refused, in
    the given order: ``not_found`` (no account, registered accounts), ``user_deactivated``,
    ``blocked`` (either blocks the other). The actor themself is not checked."""
    others = list(dict.fromkeys(user for user in users if user != actor))
    registered = services.settings.accounts == "registered"
    verdicts = await store.check_additions(services.redis, actor, others, registered)
    for user in others:
        if verdicts[user] != "ok":
            raise _REFUSALS[verdicts[user]](user)
