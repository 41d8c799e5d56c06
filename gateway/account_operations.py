"""Handlers of the account operations (docs/protocol.md): frame -> command -> one service of
core/accounts.py (their reply and push frames are gateway/frames.py's)."""

from __future__ import annotations

from imflow.core import accounts

from . import protocol
from .operations import serves

serves(protocol.Profiles, accounts.profiles, lambda user, f: accounts.GetProfiles(user, tuple(f.users)))
serves(
    protocol.SetPrivacy, accounts.set_privacy,
    lambda user, f, origin: accounts.SetPrivacy(user, f.dm, f.presence, origin=origin), origin=True,
)
