"""Handlers of the presence and conversation-settings operations (docs/protocol.md): frame ->
command -> one service of core/ (their reply and push frames are gateway/frames.py's).

Presence watches live on the connection (gateway/hub.py ``Connection.watching``): they go
with it, and the hub hands a ``presence`` push only to the connections watching its user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imflow.core import conversation_settings, presence

from . import frames, protocol
from .operations import Reply, handles, serves

if TYPE_CHECKING:
    from .app import Backend
    from .extensions import Extensions
    from .hub import Connection


serves(
    protocol.SetConversation, conversation_settings.set_conversation,
    lambda user, f, origin: conversation_settings.SetConversation(
        user, f.conversation, pinned=f.pinned, muted=f.muted, hidden=f.hidden, marked_unread=f.marked_unread, origin=origin,
    ),
    origin=True,
)


@handles(protocol.WatchPresence)
async def watch_presence(
    frame: protocol.WatchPresence, connection: Connection, backend: Backend, extensions: Extensions,
) -> Reply:
    users = tuple(dict.fromkeys(frame.users))  # once each, in the order asked
    # watched before the states are read, so a change in between is pushed, not missed (the
    # publisher tells contacts only: nothing reaches a stranger's watch meanwhile)
    added = connection.watch(users, backend.settings.presence_watch_max)
    try:
        states = await presence.watch(backend.services, presence.Watch(connection.user, users))
    except BaseException:
        connection.unwatch(added)
        raise
    return frames.reply(states)


@handles(protocol.UnwatchPresence)
async def unwatch_presence(
    frame: protocol.UnwatchPresence, connection: Connection, backend: Backend, extensions: Extensions,
) -> Reply:
    connection.unwatch(frame.users)
    return {"op": "presence_unwatched", "users": list(dict.fromkeys(frame.users))}

