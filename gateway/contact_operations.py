"""Handlers of the contact operations (docs/protocol.md): frame -> command -> one service of
core/contacts.py (their reply and push frames are gateway/frames.py's)."""

from __future__ import annotations

from imflow.core import contacts

from . import protocol
from .operations import serves

_change = {"origin": True}  # a change: its reply answers the connection, the others are pushed
serves(protocol.ContactRequest, contacts.request, lambda user, f, o: contacts.Request(user, f.user, o, f.note), **_change)
serves(protocol.ContactAccept, contacts.accept, lambda user, f, o: contacts.Accept(user, f.user, o), **_change)
serves(protocol.ContactDecline, contacts.decline, lambda user, f, o: contacts.Decline(user, f.user, o), **_change)
serves(protocol.ContactCancel, contacts.cancel, lambda user, f, o: contacts.Cancel(user, f.user, o), **_change)
serves(protocol.ContactRemove, contacts.remove, lambda user, f, o: contacts.Remove(user, f.user, o), **_change)
serves(protocol.Block, contacts.block, lambda user, f, o: contacts.Block(user, f.user, o), **_change)
serves(protocol.Unblock, contacts.unblock, lambda user, f, o: contacts.Unblock(user, f.user, o), **_change)
serves(protocol.Contacts, contacts.contacts, lambda user, f: contacts.ListContacts(user))
serves(protocol.ContactRequests, contacts.requests, lambda user, f: contacts.ListRequests(user))
serves(protocol.Blocked, contacts.blocked, lambda user, f: contacts.ListBlocked(user))

