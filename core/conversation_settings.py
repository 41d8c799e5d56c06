"""Conversation settings, the service: a user pins, mutes, hides (until the next message) or
marks unread (until the next read) a conversation they are in; every device of theirs learns it.

``set_conversation`` takes a typed command and returns the settings as the user's devices show
them; the user's other connections get the same (``ConversationSettingsChanged``). Refusals
are ImflowError: ``not_found`` for a conversation the user is not in (groups.require_member).
The offline-push hook skips muted conversations (core/offline_push.py); unread is counted all the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from . import groups
from .storage import conversation_settings as store
from .storage import gateway_events

if TYPE_CHECKING:
    from .services import Services


@dataclass(frozen=True)
class SetConversation:
    """``user`` changes the settings given (None: leave it) of ``conversation``, on connection
    ``origin`` (whose reply answers it; the user's other connections are told)."""

    user: str
    conversation: str
    pinned: bool | None = None
    muted: bool | None = None
    hidden: bool | None = None
    marked_unread: bool | None = None
    origin: str = ""


@dataclass(frozen=True)
class ConversationSettings:
    """One conversation's settings as the user's devices show them: ``hidden`` while no message
    came after the user hid it."""

    conversation: str
    pinned: bool
    muted: bool
    hidden: bool
    marked_unread: bool

    @classmethod
    def of(cls, conversation: str, stored: store.Stored, last_seq: int) -> ConversationSettings:
        return cls(conversation, stored.pinned, stored.muted, stored.hidden_at(last_seq), stored.marked_unread)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ConversationSettingsChanged:
    """A user's settings of a conversation changed on another device: ``settings`` as the
    ``set_conversation`` reply carries them."""

    kind: ClassVar[str] = "conversation_settings"
    settings: ConversationSettings

    def wire(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.settings.to_dict()}


async def set_conversation(services: Services, command: SetConversation) -> ConversationSettings:
    """Change the settings the command gives and return all of them now. ``hidden=True`` hides
    the conversation until a message comes after its last seq now. Raises ImflowError
    ``not_found`` if the user is not in the conversation; Redis errors as they come."""
    redis, user, conversation = services.redis, command.user, command.conversation
    await groups.require_member(services, conversation, user)
    last_seq = await store.last_seq(redis, conversation)
    changed, stored = await store.change(
        redis, user, conversation, last_seq=last_seq,
        pinned=command.pinned, muted=command.muted, hidden=command.hidden, marked_unread=command.marked_unread,
    )
    settings = ConversationSettings.of(conversation, stored, last_seq)
    if changed:
        await gateway_events.notify_user(redis, user, ConversationSettingsChanged(settings), skip=command.origin)
    return settings


async def read_clears_mark(services: Services, user: str, conversation: str, origin: str = "") -> None:
    """A read of ``conversation`` ends its ``marked_unread``; the user's other connections are
    told if it was set (the reading one knows: its read did it)."""
    redis = services.redis
    changed, stored = await store.change(redis, user, conversation, last_seq=0, marked_unread=False)
    if changed:
        settings = ConversationSettings.of(conversation, stored, await store.last_seq(redis, conversation))
        await gateway_events.notify_user(redis, user, ConversationSettingsChanged(settings), skip=origin)


async def muted_among(services: Services, user: str, conversations: list[str] | tuple[str, ...]) -> set[str]:
    """Which of ``conversations`` ``user`` has muted. One round trip; raises Redis errors. (The
    offline push asks for many users at once: ``store.muted_pairs``, which this goes through.)"""
    found = await store.muted_pairs(services.redis, [(user, conversation) for conversation in conversations])
    return {conversation for _, conversation in found}


async def of_conversations(services: Services, user: str, states: list[dict[str, Any]]) -> None:
    """Add ``pinned``, ``muted``, ``hidden`` and ``marked_unread`` to each conversation state of
    a sync page ({conversation, last_seq, …}), in place. One round trip."""
    stored = await store.of_user(services.redis, user)
    for state in states:
        conversation = state["conversation"]
        settings = ConversationSettings.of(conversation, stored.get(conversation, store.DEFAULTS), state["last_seq"])
        state.update(pinned=settings.pinned, muted=settings.muted, hidden=settings.hidden, marked_unread=settings.marked_unread)
