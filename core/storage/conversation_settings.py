"""A user's settings of each conversation (pinned, muted, hidden until the next message, marked
unread), in one hash per user: conversation -> JSON {pinned, muted, hidden_seq, marked_unread}.

A conversation at the defaults has no field. Changes go through one Lua script
(conversation_settings.lua), so two devices changing different settings at once both count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from . import keys
from .redis_client import text
from .scripts import script

if TYPE_CHECKING:
    from redis.asyncio import Redis


@dataclass(frozen=True)
class Stored:
    """One conversation's settings as stored: ``hidden_seq`` is the conversation's last seq when
    the user hid it (None: not hidden); it stays hidden while its last seq is at most that."""

    pinned: bool = False
    muted: bool = False
    hidden_seq: int | None = None
    marked_unread: bool = False

    def hidden_at(self, last_seq: int) -> bool:
        """Whether the conversation is hidden while its last seq is ``last_seq``."""
        return self.hidden_seq is not None and last_seq <= self.hidden_seq

    @classmethod
    def decode(cls, raw: bytes | str | None) -> Stored:
        if not raw:
            return DEFAULTS
        fields = orjson.loads(raw)
        hidden_seq = fields.get("hidden_seq")
        return cls(
            pinned=fields.get("pinned") is True,
            muted=fields.get("muted") is True,
            hidden_seq=int(hidden_seq) if hidden_seq is not None else None,
            marked_unread=fields.get("marked_unread") is True,
        )


DEFAULTS = Stored()


def _flag(value: bool | None) -> str:
    return "" if value is None else ("1" if value else "0")


async def change(
    redis: Redis, user: str, conversation: str, *, last_seq: int,
    pinned: bool | None = None, muted: bool | None = None, hidden: bool | None = None, marked_unread: bool | None = None,
) -> tuple[bool, Stored]:
    """Set the settings given (None: leave it); ``hidden=True`` stores ``last_seq`` (the
    conversation's last seq now) as ``hidden_seq``, False clears it. Returns (whether anything
    changed, the settings now). Raises Redis errors."""
    changed, is_pinned, is_muted, hidden_seq, is_marked = await script(redis, "conversation_settings")(
        keys=[keys.conversation_settings(user)],
        args=[conversation, _flag(pinned), _flag(muted), _flag(hidden), _flag(marked_unread), last_seq],
    )
    seq = text(hidden_seq)
    return bool(changed), Stored(bool(is_pinned), bool(is_muted), int(seq) if seq else None, bool(is_marked))


async def of_user(redis: Redis, user: str) -> dict[str, Stored]:
    """Every conversation of ``user`` with settings other than the defaults."""
    found = await redis.hgetall(keys.conversation_settings(user))
    return {text(conversation): Stored.decode(raw) for conversation, raw in found.items()}


async def among(redis: Redis, user: str, conversations: list[str]) -> dict[str, Stored]:
    """The settings of these conversations of ``user`` (the defaults where none are stored)."""
    if not conversations:
        return {}
    found = await redis.hmget(keys.conversation_settings(user), conversations)
    return {conversation: Stored.decode(raw) for conversation, raw in zip(conversations, found, strict=True)}


async def forget(redis: Redis, user: str, conversation: str) -> None:
    """The user's settings of a conversation go (they left it: a return starts from defaults)."""
    await redis.hdel(keys.conversation_settings(user), conversation)


async def last_seq(redis: Redis, conversation: str) -> int:
    """The conversation's last assigned seq (0 before its first message)."""
    return int(await redis.get(keys.conversation_seq(conversation)) or 0)


async def muted_pairs(redis: Redis, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (user, conversation) pairs the user muted (one round trip for all)."""
    if not pairs:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for user, conversation in pairs:
            pipe.hget(keys.conversation_settings(user), conversation)
        found = await pipe.execute()
    return {pair for pair, raw in zip(pairs, found, strict=True) if Stored.decode(raw).muted}
