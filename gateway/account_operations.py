"""Handlers of the account operations (docs/protocol.md): frame -> command -> one service of
core/accounts.py (their reply and push frames are gateway/frames.py's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imflow.core import accounts

from . import frames, protocol
from .operations import handles, serves

if TYPE_CHECKING:
    from .app import Backend
    from .extensions import Extensions
    from .hub import Connection


serves(protocol.Profiles, accounts.profiles, lambda user, f: accounts.GetProfiles(user, tuple(f.users)))


@handles(protocol.SetPrivacy)
async def set_privacy(
    frame: protocol.SetPrivacy, connection: Connection, backend: Backend, extensions: Extensions
) -> frames.Frame:
    # the connection's id: its reply answers it, the user's other connections are pushed
    command = accounts.SetPrivacy(connection.user, frame.dm, frame.presence, origin=connection.id)
    return frames.reply(await accounts.set_privacy(backend.services, command))

