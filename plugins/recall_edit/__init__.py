"""Recall and edit (docs/protocol.md, "Recall and edit"), a built-in plugin over the plugin API's
``recall_message`` / ``edit_message`` (core/amending.py does the storing, counting and telling).

Operations: ``message.recall`` ``{"conversation", "seq"}`` and ``message.edit``
``{"conversation", "seq", "body": {"text": …}}``, each answered with the message as it is now
(``{"op": …, "message": {…}}``). The sender recalls within ``recall_window_seconds`` of sending
(a group's owner or admin recalls any message, any time) and edits a text message within
``edit_window_seconds``, both counted from ``sent_at_ms`` by the server's clock.

Settings: ``IMFLOW_RECALL_EDIT_RECALL_WINDOW_SECONDS`` (120: WeChat gives two minutes, long
enough to catch a message sent to the wrong chat, short enough that a reply rarely answers what
vanishes), ``IMFLOW_RECALL_EDIT_EDIT_WINDOW_SECONDS`` (900: Telegram and Slack let a typo be
fixed for a while; a quarter of an hour keeps a conversation's record from being rewritten
long after others answered it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from imflow.plugin_api import (
    Edit,
    Hooks,
    ImflowError,
    Operation,
    OperationContext,
    Recall,
    Services,
    edit_message,
    hookimpl,
    now_ms,
    recall_message,
)

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_SEQ = (1 << 53) - 1


class RecallEditSettings(BaseSettings):
    """The plugin's settings (``IMFLOW_RECALL_EDIT_…``), shown by ``imflow config``."""

    model_config = SettingsConfigDict(env_prefix="IMFLOW_RECALL_EDIT_", env_file=".env", extra="ignore")

    recall_window_seconds: int = Field(120, ge=0, description="How long after sending its sender may recall a message")
    edit_window_seconds: int = Field(900, ge=0, description="How long after sending its sender may edit a text message")


class _Target(BaseModel):
    """The fields both operations take (the frame's other fields, ``op`` first, are ignored)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    conversation: Annotated[str, Field(min_length=1, max_length=200)]
    seq: Annotated[int, Field(ge=1, le=MAX_SEQ)]


class _EditFields(_Target):
    body: dict[str, Any]


def _parse(model: type[_Target], frame: dict[str, Any]) -> Any:
    try:
        return model.model_validate(frame)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ImflowError("bad_frame", f"{frame.get('op')}: {problems}") from exc


def _origin(context: OperationContext) -> str:
    """The asking connection's id: its reply answers it, the push goes to the user's others."""
    return context.connection.id if context.connection is not None else ""


class RecallEdit:
    """The plugin object: one per plugin manager, with the settings read when it was built.
    ``clock`` (ms since the epoch) is what the windows are measured with; tests move it."""

    def __init__(self) -> None:
        self.settings = RecallEditSettings()
        self.clock: Callable[[], int] = now_ms

    def _services(self, context: OperationContext) -> Services:
        hooks = context.gateway.hooks if context.gateway is not None else Hooks()
        return Services(settings=context.settings, redis=context.redis, node=context.node, hooks=hooks, clock=self.clock)

    async def recall(self, context: OperationContext, frame: dict[str, Any]) -> dict[str, Any]:
        """``message.recall``: the tombstone (also when it was recalled before)."""
        target = _parse(_Target, frame)
        window_ms = self.settings.recall_window_seconds * 1000
        command = Recall(context.user, target.conversation, target.seq, window_ms, origin=_origin(context))
        done = await recall_message(self._services(context), command)
        return {"op": "message.recall", "message": done.message}

    async def edit(self, context: OperationContext, frame: dict[str, Any]) -> dict[str, Any]:
        """``message.edit``: the new version (the current one when the body is the same)."""
        fields = _parse(_EditFields, frame)
        window_ms = self.settings.edit_window_seconds * 1000
        command = Edit(context.user, fields.conversation, fields.seq, fields.body, window_ms, origin=_origin(context))
        done = await edit_message(self._services(context), command)
        return {"op": "message.edit", "message": done.message}

    @hookimpl
    def imflow_settings(self) -> RecallEditSettings:
        return self.settings

    @hookimpl
    def imflow_client_operations(self) -> list[Operation]:
        return [Operation("message.recall", self.recall), Operation("message.edit", self.edit)]
