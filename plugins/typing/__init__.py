"""Typing notices: ``typing.start`` / ``typing.stop`` tell the other members of a conversation
who are connected now that a user is (no longer) typing. Written against ``imflow.plugin_api`` only.

A notice is never stored and never replayed: it goes straight to the members online
(``push_to_online_members``, one publish per gateway, a group's online index for groups of any
size) at ``Priority.LOW``, so a connection that is behind drops it before anything else, and
never to the typer's own devices. It is best effort: a client shows "typing…" for a few seconds
after the last ``start`` (clients repeat ``start`` every few seconds while the user types).

A notice reaches no one a message could not: the typer must be a member, and in a one-to-one
conversation a message to the peer must pass the send's check now (``may_write``: no block
either way, the peer's contacts-only privacy), else ``not_found`` and nothing is relayed.

Per (user, conversation, state) at most one notice is relayed per ``IMFLOW_TYPING_INTERVAL_MS``
(1000), counted in Redis so the limit holds over all the user's connections on all gateways; a
start and the stop that follows it are counted apart, so a stop right after a start still
reaches the others. One that comes too soon is answered ``relayed: false`` with
``retry_after_ms``, not refused: nothing went wrong.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from imflow.plugin_api import (
    ConversationId,
    ImflowError,
    Operation,
    OperationContext,
    hookimpl,
    is_member,
    may_write,
    push_to_online_members,
    register_script,
    script,
    user_tag,
)

STATES = ("start", "stop")
SCRIPT = "typing_throttle"
# KEYS[1]: the (user, conversation, state) key.  ARGV[1]: the interval in ms.
# Returns 0 when this notice may go (the key now holds the interval), else the ms until one may.
THROTTLE = """
if redis.call('SET', KEYS[1], '1', 'PX', ARGV[1], 'NX') then
  return 0
end
return math.max(1, redis.call('PTTL', KEYS[1]))
"""
register_script(SCRIPT, THROTTLE)  # loaded the one way, like imflow's own

RELAYED = Counter("imflow_typing_relayed", "Typing notices relayed to the members online", ["state"])
THROTTLED = Counter("imflow_typing_throttled", "Typing notices answered relayed=false (too soon after the last)", ["state"])


class TypingSettings(BaseSettings):
    """The plugin's settings (``IMFLOW_TYPING_…``), shown by ``imflow config``."""

    model_config = SettingsConfigDict(env_prefix="IMFLOW_TYPING_", env_file=".env", extra="ignore")
    interval_ms: int = Field(
        1_000, ge=1, le=60_000,
        description="At most one typing notice per user, conversation and state is relayed in this many ms (all gateways)",
    )


class TypingFrame(BaseModel):
    """The fields of ``typing.start`` and ``typing.stop`` (the gateway takes ``ref``): unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    conversation: ConversationId


def throttle_key(user: str, conversation: str, state: str) -> str:
    """The Redis key of one (user, conversation, state) limit, under the user's hash tag."""
    return f"im:typing:{user_tag(user)}:{state}:{conversation}"


class Typing:
    """The plugin object, one per plugin manager; ``settings`` default to the environment's."""

    def __init__(self, settings: TypingSettings | None = None) -> None:
        self.settings = settings or TypingSettings()

    @hookimpl
    def imflow_settings(self) -> TypingSettings:
        return self.settings

    @hookimpl
    def imflow_client_operations(self) -> list[Operation]:
        return [Operation(f"typing.{state}", partial(self.relay, state=state)) for state in STATES]

    @staticmethod
    async def may_notify(context: OperationContext, conversation: str, user: str) -> bool:
        """May ``user`` tell the others of ``conversation`` they type: a member, and in a
        one-to-one conversation one whose message to the peer would go now (no block either way,
        the peer's contacts-only privacy lets it through): a notice reaches no one a message
        could not. Read only; one round trip."""
        if not await is_member(context.redis, conversation, user):
            return False
        if conversation.startswith("p:"):  # ConversationId: p:<user>:<user>, sorted
            low, high = conversation[2:].split(":", 1)
            return await may_write(context.redis, context.settings, user, high if low == user else low)
        return True

    async def relay(self, context: OperationContext, frame: dict[str, Any], state: str) -> dict[str, Any]:
        """``typing.<state>``: relay the notice to the other members online, or say when it may go.

        Reply ``{"conversation", "relayed": true}``, or ``{"conversation", "relayed": false,
        "retry_after_ms"}`` within the interval of the last one. Raises ImflowError ``bad_frame``
        (fields) or ``not_found`` (not a member: a non-member learns nothing of the conversation;
        or a one-to-one conversation whose send would be refused now: blocked either way, or the
        peer takes messages from contacts only — nothing is relayed).
        """
        try:
            conversation = TypingFrame.model_validate(frame).conversation
        except ValidationError as exc:
            raise ImflowError("bad_frame", f"typing.{state} takes one field, conversation (a conversation id)") from exc
        user = context.user
        if not await self.may_notify(context, conversation, user):
            raise ImflowError("not_found", f"no conversation {conversation!r} for you")
        wait = int(await script(context.redis, SCRIPT)(
            keys=[throttle_key(user, conversation, state)], args=[self.settings.interval_ms]))
        if wait:
            THROTTLED.labels(state).inc()
            return {"conversation": conversation, "relayed": False, "retry_after_ms": wait}
        notice = {"op": "typing", "conversation": conversation, "user": user, "state": state}
        await push_to_online_members(context.redis, conversation, notice, skip_user=user)
        RELAYED.labels(state).inc()
        return {"conversation": conversation, "relayed": True}
