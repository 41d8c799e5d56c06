"""Handlers of the account operations (docs/protocol.md): frame -> command -> one service of
core/accounts.py; and their frames: the replies ``profiles`` and ``privacy``, and the ``privacy``
push to the user's other connections."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


# -- frames

_PUBLIC = ("user", "status", "display_name", "avatar_url", "custom")  # a profile as other users see it


def _profiles(result: accounts.Profiles) -> frames.Frame:
    shown = [{name: getattr(profile, name) for name in _PUBLIC} for profile in result.profiles]
    return {"op": "profiles", "profiles": shown, "unknown": result.unknown}


def _privacy(fields: dict[str, Any]) -> frames.Frame:
    """``privacy`` {dm, presence}: the reply to ``set_privacy`` and its push."""
    return {"op": "privacy", "dm": fields["dm"], "presence": fields["presence"]}


frames.reply.register(accounts.Profiles, _profiles)
frames.reply.register(accounts.Privacy, lambda result: _privacy(result.to_dict()))
frames.PUSHES[accounts.PrivacyChanged.kind] = _privacy
