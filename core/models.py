"""Plain domain types shared by every layer. Imports nothing of imflow."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

MAX_SAFE_INT = (1 << 53) - 1

UserId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
ClientMsgId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ConversationId = Annotated[str, StringConstraints(pattern=r"^(p:[A-Za-z0-9_.\-]{1,64}:[A-Za-z0-9_.\-]{1,64}|g:[A-Za-z0-9_.\-]{1,64})$")]

_USER = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def direct_conversation(a: str, b: str) -> str:
    """The id of the one-to-one conversation between two users, the same from either side."""
    for user in (a, b):
        if not _USER.match(user):
            raise ValueError(f"invalid user id {user!r}")
    low, high = sorted((a, b))
    return f"p:{low}:{high}"


class Record(BaseModel):
    """Base of every record carried on a topic: strict, frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class SendCommand(Record):
    """What a gateway puts on the ingest topic for one client send."""

    sender: UserId
    client_msg_id: ClientMsgId
    conversation: ConversationId
    body: dict = Field(default_factory=dict)
    sent_at_ms: int = Field(ge=0, le=MAX_SAFE_INT)
    gateway: str = ""  # node that holds the sender's connection, for the ACK


class Accepted(Record):
    """The ingest agent's verdict on a SendCommand: the server's id and seq for it."""

    conversation: ConversationId
    sender: UserId
    client_msg_id: ClientMsgId
    mid: int = Field(ge=0, le=MAX_SAFE_INT)
    seq: int = Field(ge=1, le=MAX_SAFE_INT)
    duplicate: bool
