"""What the service layer tells users' devices, as typed notifications.

A service says *what happened* (your message was stored; a message arrived; a message was set
aside); the gateway that holds the device turns each notification into its client frame
(gateway/frames.py). Between a worker and a gateway a notification travels as a small JSON
object ``{"kind": …, …fields}`` (``wire()``), inside the batches of core/storage/gateway_events.py.
The service layer never builds a client frame (a plugin's own frames travel as built:
``frame_to_user``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .storage import gateway_events

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .models import Message


@dataclass(frozen=True, slots=True)
class Sent:
    """The sender's message is stored: its server ids (the ACK, docs/protocol.md ``sent``)."""

    kind: ClassVar[str] = "sent"
    cmid: str
    conversation: str
    mid: int
    seq: int

    def wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "cmid": self.cmid, "conversation": self.conversation, "mid": self.mid, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message reached a member: ``message`` as its JSON object (``Message.model_dump()``,
    made once per message however many members and gateways it goes to); ``unread`` is their
    count for its conversation and their total ({"conversation", "count", "total"}) where write
    fan-out knows it now, else None (read fan-out: the count follows with the next flush or sync)."""

    kind: ClassVar[str] = "msg"
    message: dict[str, Any]
    unread: dict[str, Any] | None = None

    @classmethod
    def of(cls, message: Message, unread: dict[str, Any] | None = None) -> Delivered:
        return cls(message.model_dump(), unread)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.unread is not None:
            out["unread"] = self.unread
        return out


@dataclass(frozen=True, slots=True)
class Rejected:
    """A worker could not process the message ``cmid`` and set it aside (core/dead_letter.py)."""

    kind: ClassVar[str] = "rejected"
    cmid: str
    message: str

    def wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "cmid": self.cmid, "message": self.message}


@dataclass(frozen=True, slots=True)
class UnreadChanged:
    """A user's unread state moved (they read on another device): ``state`` is
    {"conversation", "count", "total", "read_seq"}, as the ``read`` reply carries it."""

    kind: ClassVar[str] = "unread"
    state: dict[str, Any]

    def wire(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.state}


@dataclass(frozen=True, slots=True)
class Receipt:
    """``user`` has read the one-to-one ``conversation`` up to ``read_seq`` (told to the other
    user's devices when that read seq moves forward; docs/protocol.md ``receipt``)."""

    kind: ClassVar[str] = "receipt"
    conversation: str
    user: str
    read_seq: int

    def wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "conversation": self.conversation, "user": self.user, "read_seq": self.read_seq}


class Notification(Protocol):
    """What every notification is: a ``kind`` the gateway knows a frame for (gateway/frames.py)
    and its fields as they travel. The four above are the message path's; the social graph's
    live beside their services (``contacts.ContactChanged``, ``accounts.PrivacyChanged``,
    ``presence.PresenceChanged``, ``conversation_settings.ConversationSettingsChanged``)."""

    kind: ClassVar[str]

    def wire(self) -> dict[str, Any]: ...


async def frame_to_user(redis: Redis, user: str, frame: dict[str, Any]) -> None:
    """A frame a plugin built (plugins own their frames' shape) to every connection of ``user``,
    on whichever gateways hold them. Raises Redis errors as they come."""
    await gateway_events.to_user(redis, user, frame)
