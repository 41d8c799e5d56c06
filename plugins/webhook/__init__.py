"""Webhook: imflow's events POSTed to your server as signed JSON, in batches, never in the way
of a send. Written against ``imflow.plugin_api`` only.

Events (``IMFLOW_WEBHOOK_EVENTS``, comma-separated; default ``offline_push``):

- ``offline_push``: a message reached a user none of whose devices was connected (the
  ``imflow_offline_push`` hook: muted conversations are left out before it) — for a push
  notification through FCM or APNs;
- ``message_sent``: a message was stored (``imflow_after_persist``);
- ``group_changed``: a group's members or roles changed (``imflow_group_changed``);
- ``message_amended``: a message was recalled or edited (``imflow_message_amended``).

Each process (gateway, worker, or ``imflow serve``) runs one sender task (``sender.py``) from
``imflow_startup`` to ``imflow_shutdown``; the hooks only put events on its bounded queue.
Kafka delivers at least once, so the same event may come twice: receivers de-duplicate on the
event's ``id``. With ``IMFLOW_WEBHOOK_URL`` empty (the default) the plugin implements none of the
event hooks, so the core does not even build their arguments.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imflow.plugin_api import hookimpl

from .sender import SIGNATURE_HEADER, TIMESTAMP_HEADER, Delivery, Sender, signature

if TYPE_CHECKING:
    from imflow.plugin_api import Amendment, GroupChange, Message, OfflinePush, Services

EVENTS = ("offline_push", "message_sent", "group_changed", "message_amended")
EVENT_HOOKS = {  # event -> the hook that reports it
    "offline_push": "imflow_offline_push",
    "message_sent": "imflow_after_persist",
    "group_changed": "imflow_group_changed",
    "message_amended": "imflow_message_amended",
}

__all__ = ["EVENTS", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Webhook", "WebhookSettings", "signature"]


class WebhookSettings(BaseSettings):
    """The plugin's settings (``IMFLOW_WEBHOOK_…``), shown by ``imflow config``."""

    model_config = SettingsConfigDict(env_prefix="IMFLOW_WEBHOOK_", env_file=".env", extra="ignore")
    url: str = Field("", description="Where events are POSTed (http or https); empty: the webhook is off")
    secret: SecretStr | None = Field(None, description="Key of the X-Imflow-Signature HMAC-SHA256; unset: not signed")
    events: str = Field("offline_push", description=f"Comma-separated events to send: {', '.join(EVENTS)}")
    queue_size: int = Field(
        50_000, ge=1,
        description="Events waiting per process at most (~0.5 KB each); past it new ones are dropped. "
        "An @all to 10,000 members offline is 10,000",
    )
    batch_size: int = Field(100, ge=1, le=10_000, description="Events per POST at most")
    batch_wait_ms: int = Field(200, ge=0, description="How long a batch waits for more events after its first")
    timeout_seconds: float = Field(5.0, gt=0, description="Time limit of one POST")
    attempts: int = Field(5, ge=1, description="Tries per batch (408, 429, 5xx and network errors are retried)")
    backoff_initial_ms: int = Field(200, ge=0, description="Wait before the first retry; doubles each time, with jitter")
    backoff_max_ms: int = Field(10_000, ge=0, description="Longest wait between two tries")
    shutdown_drain_seconds: float = Field(
        2.0, ge=0, description="At shutdown, how long the events still queued may take to go; what is left is dropped",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("the webhook URL starts with http:// or https://")
        return value

    @field_validator("secret")
    @classmethod
    def _secret_or_none(cls, value: SecretStr | None) -> SecretStr | None:
        # an empty IMFLOW_WEBHOOK_SECRET= means unsigned, never "signed with the empty key"
        return value if value is not None and value.get_secret_value() else None

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: str) -> str:
        unknown = set(cls.names(value)) - set(EVENTS)
        if unknown:
            raise ValueError(f"unknown webhook event(s) {sorted(unknown)}; choose from {', '.join(EVENTS)}")
        return value

    @staticmethod
    def names(events: str) -> list[str]:
        return [name.strip() for name in events.split(",") if name.strip()]

    @property
    def enabled_events(self) -> frozenset[str]:
        """The events to send: none while the URL is empty."""
        return frozenset(self.names(self.events)) if self.url else frozenset()


def _event(kind: str, event_id: str, at_ms: int, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": event_id, "type": kind, "at_ms": at_ms, "data": data}


def offline_push_event(push: OfflinePush, dumped: dict[str, Any] | None = None) -> dict[str, Any]:
    """The event of one offline push; ``dumped``: its message's ``model_dump()`` if made already
    (one per message for a batch: an @all's pushes share it)."""
    message = push.message
    data = {"user": push.user, "message": message.model_dump() if dumped is None else dumped, "total": push.total,
            "mentions": push.mentions}
    return _event("offline_push", f"offline_push:{message.mid}:{push.user}", message.sent_at_ms, data)


def message_sent_event(message: Message) -> dict[str, Any]:
    return _event("message_sent", f"message_sent:{message.mid}", message.sent_at_ms, {"message": message.model_dump()})


def change_digest(change: GroupChange) -> str:
    """12 hex digits of SHA-256 over the actor and the sorted changes: two changes of one group,
    kind and millisecond (two members leaving at once) get different event ids."""
    canonical = orjson.dumps([change.actor, sorted(change.changes.items())])
    return hashlib.sha256(canonical).hexdigest()[:12]


def group_changed_event(change: GroupChange) -> dict[str, Any]:
    data = {"gid": change.gid, "kind": change.kind, "changes": change.changes, "actor": change.actor}
    event_id = f"group_changed:{change.gid}:{change.kind}:{change.at_ms}:{change_digest(change)}"
    return _event("group_changed", event_id, change.at_ms, data)


def message_amended_event(amendment: Amendment) -> dict[str, Any]:
    """An edit makes each version once, a recall happens once: (mid, kind, version) names it
    (two edits in one millisecond included)."""
    data = {"kind": amendment.kind, "conversation": amendment.conversation, "seq": amendment.seq, "mid": amendment.mid,
            "by": amendment.by, "message": amendment.message}
    version = amendment.message.get("version") or 1  # left out of a message's JSON until its first edit
    event_id = f"message_amended:{amendment.mid}:{amendment.kind}:v{version}"
    return _event("message_amended", event_id, amendment.at_ms, data)


class Webhook:
    """The plugin object, one per plugin manager; ``settings`` default to the environment's."""

    def __init__(self, settings: WebhookSettings | None = None) -> None:
        self.settings = settings or WebhookSettings()
        self.events = self.settings.enabled_events
        for event, hook in EVENT_HOOKS.items():
            if event not in self.events:
                # not a routine: pluggy registers no implementation of the hook for this object,
                # so a core caller that asks ``has_implementations`` skips its work (a Redis
                # round trip per batch for offline pushes)
                setattr(self, hook, None)
        self.sender: Sender | None = None
        if self.events:  # events offered before start-up wait in its queue
            settings = self.settings
            delivery = Delivery(
                url=settings.url,
                secret=settings.secret.get_secret_value().encode() if settings.secret is not None else None,
                batch_size=settings.batch_size,
                batch_wait_s=settings.batch_wait_ms / 1000,
                timeout_s=settings.timeout_seconds,
                attempts=settings.attempts,
                backoff_initial_s=settings.backoff_initial_ms / 1000,
                backoff_max_s=settings.backoff_max_ms / 1000,
                drain_s=settings.shutdown_drain_seconds,
            )
            self.sender = Sender(delivery, settings.queue_size)

    @hookimpl
    def imflow_settings(self) -> WebhookSettings:
        return self.settings

    @hookimpl
    def imflow_startup(self, services: Services) -> None:
        if self.sender is not None:
            self.sender.start(services.node)

    @hookimpl
    async def imflow_shutdown(self) -> None:
        if self.sender is not None:
            await self.sender.stop()

    def offer(self, event: dict[str, Any]) -> None:
        """Queue an event for the sender (never waits; a full queue drops it and counts it)."""
        if self.sender is not None:
            self.sender.offer(event)

    # the event hooks: each only queues (never awaits the network), so no send waits for the receiver

    @hookimpl
    def imflow_offline_push(self, pushes: list[OfflinePush]) -> None:
        dumped: dict[int, dict[str, Any]] = {}  # mid -> the message's JSON: once per message, not per user
        for push in pushes:
            message = push.message
            if (data := dumped.get(message.mid)) is None:
                data = dumped[message.mid] = message.model_dump()
            self.offer(offline_push_event(push, data))

    @hookimpl
    def imflow_after_persist(self, messages: list[Message]) -> None:
        for message in messages:
            self.offer(message_sent_event(message))

    @hookimpl
    def imflow_group_changed(self, change: GroupChange) -> None:
        self.offer(group_changed_event(change))

    @hookimpl
    def imflow_message_amended(self, amendment: Amendment) -> None:
        self.offer(message_amended_event(amendment))
