"""The types plugins return from hooks. Plain data; imports nothing but core models."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .settings import Settings

PLUGIN_CODE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def plugin_error_code(code: str) -> str:
    """A plugin's error code as clients see it: ``plugin.reason``; anything else is a plugin bug,
    reported as ``plugin.error`` so it can never pass for one of imflow's own codes."""
    return code if isinstance(code, str) and PLUGIN_CODE.match(code) else "plugin.error"


@dataclass(frozen=True)
class Rejection:
    """A refusal with a stable error code (``plugin.reason``) and a message for the user."""

    code: str
    message: str


@dataclass(frozen=True)
class MessageType:
    """A message type: ``validate`` gets the body, returns it (maybe normalised) or raises ValueError."""

    name: str
    validate: Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class OperationContext:
    """What a plugin operation gets: who asks, and the storage and settings of this gateway."""

    user: str
    node: str
    redis: Redis
    settings: Settings
    push: Callable[[str, dict[str, Any]], Awaitable[None]]  # push(user, frame) to all their connections
    produce: Callable[[str, bytes, bytes], Awaitable[None]]  # produce(topic, key, value): to a plugin agent


@dataclass(frozen=True)
class Operation:
    """A client operation ``name`` (with a dot: ``plugin.verb``).

    ``handle(context, frame)`` gets the frame as a dict and returns the reply frame (a dict
    whose ``op`` defaults to the operation's name) or None; raise ``OperationError`` to
    answer with an error frame.
    """

    name: str
    handle: Callable[[OperationContext, dict[str, Any]], Awaitable[dict[str, Any] | None]]


class OperationError(Exception):
    """Raised by a plugin operation: becomes an error frame with this code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
