"""The types plugins return from hooks and receive. Plain data; plugins import them from imflow.plugin_api."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from .errors import ImflowError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis

    from .models import Message
    from .plugin_calls import Hooks
    from .settings import Settings

PLUGIN_CODE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def plugin_error_code(code: str) -> str:
    """A plugin's error code as clients see it: ``plugin.reason``; anything else is a plugin bug,
    reported as ``plugin.error`` so it can never pass for one of imflow's own codes."""
    return code if isinstance(code, str) and PLUGIN_CODE.match(code) else "plugin.error"


@dataclass(frozen=True)
class Rejection:
    """A refusal returned by a hook (``imflow_before_send``, ``imflow_admit_broadcast``): the same
    triple as ``ImflowError`` — a stable error code (``plugin.reason``), a message for the user,
    and ``retry_after_ms`` (when trying again can succeed, for rate limits) — returned, not raised."""

    code: str
    message: str
    retry_after_ms: int | None = None

    def error(self) -> OperationError:
        """This refusal as the error to raise (from an operation, for example)."""
        return OperationError(self.code, self.message, self.retry_after_ms)


class Priority(IntEnum):
    """How much a frame to a client matters when its connection falls behind."""

    LOW = 0  # may be dropped or sampled: ordinary live-room chat
    NORMAL = 1  # replies, messages of conversations (the inbox has them anyway)
    HIGH = 2  # never dropped while the connection lives: gifts, red packets, a room host's words


class PreparedFrame:
    """One frame's JSON bytes, serialised once for many connections (a live room's batch to all
    its viewers). The gateway frames it for the WebSocket once too, on first use, and keeps the
    framed bytes in ``wire``: server frames are not masked (RFC 6455 §5.1), so every connection
    can be sent the very same bytes."""

    __slots__ = ("data", "wire")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.wire: bytes | None = None  # set by the gateway: header + data


class Outbound(Protocol):
    """A client connection as plugins see it: who, and a bounded, prioritised way to it."""

    id: str
    user: str

    def push(self, frame: dict[str, Any], priority: Priority = Priority.NORMAL) -> None: ...
    def push_raw(self, data: bytes | PreparedFrame, priority: Priority = Priority.NORMAL) -> None:
        """Push a frame already serialised; to push one frame to many connections, wrap its
        bytes in one ``PreparedFrame`` and push that to each (it is framed once)."""
        ...
    @property
    def is_closed(self) -> bool: ...


@dataclass(frozen=True)
class GatewayLoad:
    """How hard-pressed a gateway is now (what a circuit breaker looks at)."""

    connections: int
    queued_frames: int  # waiting in the gateway for sockets whose send buffers are full
    slow_connections: int  # behind: more than outbound_buffer_bytes waiting
    loop_lag_ms: float  # how late the event loop runs timers


@dataclass(frozen=True)
class GatewayContext:
    """What a plugin gets on a gateway: its node, storage, hooks, load, and the way to put a
    record on a broadcast stream (which every gateway reads whole)."""

    node: str
    settings: Settings
    redis: Redis
    hooks: Hooks
    load: Callable[[], GatewayLoad]
    broadcast: Callable[[str, bytes, bytes], Awaitable[None]]  # broadcast(topic, key, value)


@dataclass(frozen=True)
class BroadcastStream:
    """A topic every gateway reads in full (unlike an agent's, which workers share out): the way
    to reach viewers wherever they are connected. ``handle(context, values)`` gets batches of
    record values in order; records written before the gateway started are not replayed."""

    topic: str
    handle: Callable[[GatewayContext, list[bytes]], Awaitable[None]]


class MessageBody(BaseModel):
    """Base of a message type's body schema: strict types, unknown fields refused, frozen.

    Declare a body once, with its limits, and the gateway refuses every body outside it before
    the message is queued (docs/plugins.md, "Message types")::

        class PollBody(MessageBody):
            question: Annotated[str, Field(min_length=1, max_length=300)]
            options: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(min_length=2, max_length=10)]
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@dataclass(frozen=True)
class MessageType:
    """A message type ``name`` and the one declaration of its body.

    ``schema`` (a MessageBody subclass) is the declaration; the stored body is the schema's
    dump of what the client sent (defaults filled in). ``validate`` (body dict → body dict,
    raising ValueError or TypeError) may normalise further after the schema, or stand alone
    for plugins written before schemas existed. Either way the frame-wide limits hold
    (core/wire.py: depth, numbers, UTF-8) and a refusal is ``bad_frame``.
    """

    name: str
    validate: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    schema: type[BaseModel] | None = None

    def __post_init__(self) -> None:
        if self.schema is None and self.validate is None:
            raise TypeError(f"message type {self.name!r} needs a schema (or a validate function)")


@dataclass(frozen=True)
class OperationContext:
    """What a plugin operation gets: who asks, and the storage and settings of this gateway."""

    user: str
    node: str
    redis: Redis
    settings: Settings
    push: Callable[[str, dict[str, Any]], Awaitable[None]]  # push(user, frame) to all their connections
    produce: Callable[[str, bytes, bytes], Awaitable[None]]  # produce(topic, key, value): to a plugin agent
    connection: Outbound | None = None  # the connection the operation came on
    gateway: GatewayContext | None = None  # this gateway: broadcast streams, load, hooks


@dataclass(frozen=True)
class Operation:
    """A client operation ``name`` (with a dot: ``plugin.verb``).

    ``handle(context, frame)`` gets the frame as a dict and returns the reply frame (a dict
    whose ``op`` defaults to the operation's name) or None; raise ``OperationError`` to
    answer with an error frame.
    """

    name: str
    handle: Callable[[OperationContext, dict[str, Any]], Awaitable[dict[str, Any] | None]]


class OperationError(ImflowError):
    """Raised by a plugin operation: becomes an error frame with this code (a plugin's codes
    contain a dot). The one error type, ``ImflowError``, under the name plugins have always used."""


@dataclass(frozen=True)
class OfflinePush:
    """A message that reached ``user`` while none of their devices was connected, for
    ``imflow_offline_push``: the stored ``message``, the user's unread ``total`` after it (a
    badge), and whether it ``mentions`` them (``@user`` or ``@all``)."""

    user: str
    message: Message
    total: int
    mentions: bool = False


@dataclass(frozen=True)
class Amendment:
    """A message changed after it was sent, for ``imflow_message_amended``: ``kind`` is
    ``"recall"`` (its body is gone for everyone, a tombstone stays) or ``"edit"`` (a new
    version); ``message`` is the message as stored now (a dict, as clients get it); ``by`` the
    user who did it, ``at_ms`` when."""

    kind: str
    conversation: str
    seq: int
    mid: int
    by: str
    at_ms: int
    message: dict[str, Any]


@dataclass(frozen=True)
class GroupChange:
    """A group's membership changed, for ``imflow_group_changed``: ``kind`` is ``"joined"``
    (created or added), ``"removed"``, ``"left"`` or ``"role"``; ``changes`` maps each user to
    their role now (``""`` for one who is no longer a member); ``actor`` made the change at
    ``at_ms``."""

    gid: str
    kind: str
    changes: dict[str, str]
    actor: str
    at_ms: int
