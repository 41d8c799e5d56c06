"""Client frames: JSON text, one object per frame, ``op`` names the operation.

Parsing never raises anything but ImflowError with a stable code, whatever the client sends.
docs/protocol.md documents every frame.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, model_validator

from imflow.core import wire
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.models import MAX_SAFE_INT, ClientMsgId, ConversationId, MessageType, SafeInt, UserId

Ref = Annotated[str, Field(max_length=64)] | Annotated[int, Field(ge=0, le=MAX_SAFE_INT)]


class ClientFrame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    ref: Ref | None = None  # echoed in the reply, so a client can match replies to requests


class Auth(ClientFrame):
    op: Literal["auth"]
    token: Annotated[str, Field(max_length=4096)]


class Send(ClientFrame):
    op: Literal["send"]
    cmid: ClientMsgId
    to: UserId | None = None
    conversation: ConversationId | None = None
    type: MessageType = "text"
    body: dict[str, Any]

    @model_validator(mode="after")
    def _one_target(self) -> Send:
        # the body is checked against its type's schema (core/message_types.py) by the handler
        if (self.to is None) == (self.conversation is None):
            raise ValueError("give exactly one of 'to' (a user) or 'conversation'")
        return self


class Ack(ClientFrame):
    op: Literal["ack"]
    mids: Annotated[list[SafeInt], Field(min_length=1, max_length=1000)]


class Read(ClientFrame):
    op: Literal["read"]
    conversation: ConversationId
    seq: SafeInt


class Sync(ClientFrame):
    op: Literal["sync"]
    before_mid: SafeInt | None = None
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class History(ClientFrame):
    op: Literal["history"]
    conversation: ConversationId
    before_seq: SafeInt | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class Delete(ClientFrame):
    op: Literal["delete"]
    conversation: ConversationId
    mid: SafeInt


class Ping(ClientFrame):
    op: Literal["ping"]


Seq = Annotated[int, Field(ge=1, le=MAX_SAFE_INT)]


class Receipts(ClientFrame):
    op: Literal["receipts"]
    conversation: ConversationId
    seqs: Annotated[list[Seq], Field(min_length=1, max_length=100)]


class Readers(ClientFrame):
    op: Literal["readers"]
    conversation: ConversationId
    seq: Seq


GroupId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
Users = Annotated[list[UserId], Field(max_length=1000)]


class CreateGroup(ClientFrame):
    op: Literal["create_group"]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    members: Users = []


class AddMembers(ClientFrame):
    op: Literal["add_members"]
    gid: GroupId
    users: Annotated[list[UserId], Field(min_length=1, max_length=1000)]


class RemoveMember(ClientFrame):
    op: Literal["remove_member"]
    gid: GroupId
    user: UserId


class LeaveGroup(ClientFrame):
    op: Literal["leave_group"]
    gid: GroupId


class SetRole(ClientFrame):
    op: Literal["set_role"]
    gid: GroupId
    user: UserId
    role: Literal["owner", "admin", "member"]


class GroupMembers(ClientFrame):
    op: Literal["group_members"]
    gid: GroupId


class MyGroups(ClientFrame):
    op: Literal["my_groups"]


# -- accounts and the social graph (docs/protocol.md, "Contacts, blocking and presence")

Note = Annotated[str, Field(max_length=500)]
SomeUsers = Annotated[list[UserId], Field(min_length=1, max_length=100)]
WatchedUsers = Annotated[list[UserId], Field(min_length=1, max_length=1000)]


class Profiles(ClientFrame):
    op: Literal["profiles"]
    users: SomeUsers


class SetPrivacy(ClientFrame):
    op: Literal["set_privacy"]
    dm: Literal["anyone", "contacts"] | None = None  # who may message the user one-to-one
    presence: Literal["visible", "hidden"] | None = None

    @model_validator(mode="after")
    def _something(self) -> SetPrivacy:
        if self.dm is None and self.presence is None:
            raise ValueError("give 'dm', 'presence' or both")
        return self


class ContactRequest(ClientFrame):
    op: Literal["contact_request"]
    user: UserId
    note: Note = ""


class ContactAccept(ClientFrame):
    op: Literal["contact_accept"]
    user: UserId


class ContactDecline(ClientFrame):
    op: Literal["contact_decline"]
    user: UserId


class ContactCancel(ClientFrame):
    op: Literal["contact_cancel"]
    user: UserId


class ContactRemove(ClientFrame):
    op: Literal["contact_remove"]
    user: UserId


class Contacts(ClientFrame):
    op: Literal["contacts"]


class ContactRequests(ClientFrame):
    op: Literal["contact_requests"]


class Block(ClientFrame):
    op: Literal["block"]
    user: UserId


class Unblock(ClientFrame):
    op: Literal["unblock"]
    user: UserId


class Blocked(ClientFrame):
    op: Literal["blocked"]


class SetConversation(ClientFrame):
    op: Literal["set_conversation"]
    conversation: ConversationId
    pinned: bool | None = None
    muted: bool | None = None
    hidden: bool | None = None  # until the next message
    marked_unread: bool | None = None  # until the next read

    @model_validator(mode="after")
    def _something(self) -> SetConversation:
        if all(value is None for value in (self.pinned, self.muted, self.hidden, self.marked_unread)):
            raise ValueError("give at least one of pinned, muted, hidden, marked_unread")
        return self


class WatchPresence(ClientFrame):
    op: Literal["watch_presence"]
    users: WatchedUsers


class UnwatchPresence(ClientFrame):
    op: Literal["unwatch_presence"]
    users: WatchedUsers


class PluginCall(ClientFrame):
    """An operation a plugin added; its own handler validates ``fields``."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    op: str

    @property
    def fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# The registry of built-in operations: each frame class once, in this union; its ``op``
# literal is the operation's name. The parser, BUILT_IN and OPS, the handler table
# (gateway/operations.py), the HTTP routes (gateway/http_api.py) and the test that
# docs/protocol.md documents exactly these (tests/test_services_registry.py) derive from it.
Frame = Annotated[
    Auth | Send | Ack | Read | Sync | History | Delete | Ping | Receipts | Readers
    | CreateGroup | AddMembers | RemoveMember | LeaveGroup | SetRole | GroupMembers | MyGroups
    | Profiles | SetPrivacy | ContactRequest | ContactAccept | ContactDecline | ContactCancel | ContactRemove
    | Contacts | ContactRequests | Block | Unblock | Blocked | SetConversation | WatchPresence | UnwatchPresence,
    Field(discriminator="op"),
]
BUILT_IN: tuple[type[ClientFrame], ...] = get_args(get_args(Frame)[0])


def op_of(frame_class: type[ClientFrame]) -> str:
    """The operation name of a built-in frame class (its ``op`` literal)."""
    (name,) = get_args(frame_class.model_fields["op"].annotation)
    return str(name)


OPS: tuple[str, ...] = tuple(op_of(frame_class) for frame_class in BUILT_IN)
FRAME_CLASSES: dict[str, type[ClientFrame]] = dict(zip(OPS, BUILT_IN, strict=True))
_frame = TypeAdapter(Frame)


def parse(text: str | bytes, plugin_ops: frozenset[str] | set[str] = frozenset()) -> ClientFrame:
    """The frame ``text`` holds, or ImflowError(bad_json | bad_frame | unknown_op).

    Text and binary frames alike go through core/wire.py first: strict UTF-8, depth and
    number limits, whatever the operation (a plugin's included).
    """
    data = wire.decode(text)
    if not isinstance(data, dict):
        raise ImflowError(ErrorCode.BAD_FRAME, "a frame is a JSON object")
    op = data.get("op")
    if isinstance(op, str) and op in plugin_ops:
        try:
            return PluginCall.model_validate(data)
        except ValidationError as exc:
            raise ImflowError(ErrorCode.BAD_FRAME, f"bad ref: {exc.errors()[0]['msg']}") from exc
    if op not in OPS:
        known = ", ".join([*OPS, *sorted(plugin_ops)])
        raise ImflowError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}; known: {known}")
    try:
        return _frame.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'frame'}: {e['msg']}" for e in exc.errors())
        raise ImflowError(ErrorCode.BAD_FRAME, problems) from exc


def ref_of(text: str | bytes) -> Any:
    """The ``ref`` of a frame that failed to parse, if one can be read, for the error frame."""
    try:
        data = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return None
    ref = data.get("ref") if isinstance(data, dict) else None
    if isinstance(ref, str) and len(ref) <= 64:
        return ref
    if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref <= MAX_SAFE_INT:
        return ref
    return None


