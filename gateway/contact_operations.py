"""Handlers of the contact operations (docs/protocol.md): frame -> command -> one service of
core/contacts.py (their reply and push frames are gateway/frames.py's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imflow.core import contacts

from . import frames, protocol
from .operations import handles, serves

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from imflow.core.services import Services

    from .app import Backend
    from .extensions import Extensions
    from .hub import Connection


def _changes(
    frame_class: type[protocol.ClientFrame],
    service: Callable[[Services, Any], Awaitable[contacts.ContactEvent]],
    command: Callable[[str, str, Any], contacts.Change],
) -> None:
    """Register the handler of a contact change: ``command(user, connection id, frame)`` (the
    connection's reply answers it, the user's other connections are pushed the same frame)."""

    async def handler(frame: Any, connection: Connection, backend: Backend, extensions: Extensions) -> frames.Frame:
        origin = connection.id
        return frames.reply(await service(backend.services, command(connection.user, origin, frame)))

    handles(frame_class)(handler)


_changes(protocol.ContactRequest, contacts.request, lambda user, origin, f: contacts.Request(user, f.user, origin, f.note))
_changes(protocol.ContactAccept, contacts.accept, lambda user, origin, f: contacts.Accept(user, f.user, origin))
_changes(protocol.ContactDecline, contacts.decline, lambda user, origin, f: contacts.Decline(user, f.user, origin))
_changes(protocol.ContactCancel, contacts.cancel, lambda user, origin, f: contacts.Cancel(user, f.user, origin))
_changes(protocol.ContactRemove, contacts.remove, lambda user, origin, f: contacts.Remove(user, f.user, origin))
_changes(protocol.Block, contacts.block, lambda user, origin, f: contacts.Block(user, f.user, origin))
_changes(protocol.Unblock, contacts.unblock, lambda user, origin, f: contacts.Unblock(user, f.user, origin))
serves(protocol.Contacts, contacts.contacts, lambda user, f: contacts.ListContacts(user))
serves(protocol.ContactRequests, contacts.requests, lambda user, f: contacts.ListRequests(user))
serves(protocol.Blocked, contacts.blocked, lambda user, f: contacts.ListBlocked(user))

