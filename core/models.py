"""Plain domain types shared by every layer. Imports nothing of imflow."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)

MAX_SAFE_INT = (1 << 53) - 1  # the largest integer a JSON number keeps exactly in every client

USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN.pattern)]
ClientMsgId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
def _one_spelling(conversation: str) -> str:
    """A one-to-one conversation has one id: its two user ids sorted (``p:alice:bob``), so
    ``p:bob:alice`` is refused rather than becoming a second conversation with its own seqs."""
    if conversation.startswith("p:"):
        low, _, high = conversation[2:].partition(":")
        if low > high:
            raise ValueError(f"a one-to-one conversation id lists its two users sorted: p:{high}:{low}")
    return conversation


ConversationId = Annotated[
    str,
    StringConstraints(pattern=r"^(p:[A-Za-z0-9_.\-]{1,64}:[A-Za-z0-9_.\-]{1,64}|g:[A-Za-z0-9_.\-]{1,64})$"),
    AfterValidator(_one_spelling),
]
MessageType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.\-]{0,31}$")]
SafeInt = Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]


def direct_conversation(a: str, b: str) -> str:
    """The id of the one-to-one conversation between two users, the same from either side."""
    for user in (a, b):
        if not USER_ID_PATTERN.fullmatch(user):
            raise ValueError(f"invalid user id {user!r}")
    low, high = sorted((a, b))
    return f"p:{low}:{high}"


def group_conversation(gid: str) -> str:
    """The id of group ``gid``'s conversation: ``g:<gid>``."""
    return f"g:{gid}"


def group_id(conversation: str) -> str | None:
    """The gid of a group conversation id (``g:<gid>``), or None if it is not one."""
    kind, _, gid = conversation.partition(":")
    return gid if kind == "g" and gid else None


def direct_members(conversation: str) -> tuple[str, str] | None:
    """The two users of a one-to-one conversation id, or None if it is not one."""
    kind, _, rest = conversation.partition(":")
    if kind != "p":
        return None
    low, _, high = rest.partition(":")
    return (low, high) if low and high else None


class Record(BaseModel):
    """Base of every record carried on a topic: strict, frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class SendCommand(Record):
    """What a gateway puts on the ingest topic for one client send."""

    sender: UserId
    client_msg_id: ClientMsgId
    conversation: ConversationId
    type: MessageType = "text"
    body: dict[str, Any] = Field(default_factory=dict)
    sent_at_ms: SafeInt
    gateway: str = ""  # node that holds the sender's connection, for the ACK
    origin: str = ""  # the sending connection, which needs no push of its own message


AMENDMENT_FIELDS = ("edited_at_ms", "version", "recalled_at_ms", "recalled_by")  # absent from the JSON while unset


class Message(Record):
    """A message as stored and delivered: what the client sent plus the server's mid and seq.

    After a change (core/amending.py) it carries ``edited_at_ms`` and ``version`` (2, 3, … after
    edits; absent means 1), or ``recalled_at_ms`` and ``recalled_by`` with ``body`` ``{}`` (a
    tombstone). Those fields are left out of its JSON while unset, so an untouched message's
    bytes are what they always were (stored entries, replays, the archive queue)."""

    mid: SafeInt
    seq: Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]
    conversation: ConversationId
    sender: UserId
    client_msg_id: ClientMsgId
    type: MessageType = "text"
    body: dict[str, Any] = Field(default_factory=dict)
    sent_at_ms: SafeInt
    edited_at_ms: SafeInt | None = None
    version: Annotated[int, Field(ge=2, le=MAX_SAFE_INT)] | None = None
    recalled_at_ms: SafeInt | None = None
    recalled_by: UserId | None = None

    @model_serializer(mode="wrap")
    def _unset_changes_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in AMENDMENT_FIELDS:
            if data.get(name, 0) is None:
                del data[name]
        return data


class Accepted(Record):
    """The ingest agent's verdict on a SendCommand: the server's id and seq for it."""

    conversation: ConversationId
    sender: UserId
    client_msg_id: ClientMsgId
    mid: SafeInt
    seq: Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]
    duplicate: bool
