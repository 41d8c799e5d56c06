"""Every hook a plugin can implement, in one place (docs/plugins.md documents each with its signature).

A plugin is an object (or module) with methods named like these hooks and decorated with
``imflow.plugin_api.hookimpl``. Hooks may be ``async def`` except the registration hooks
(REGISTRATION), which run at start-up. Callers use the typed façade ``hooks.call.<hook>``
(core/plugin_calls.py), which takes first-result-or-all from the ``firstresult`` flag here.
A hook implementation that raises is logged with its plugin's name and skipped: one plugin
never takes down a gateway or a worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings
    from starlette.routing import BaseRoute

    from .agents import AgentContext, AgentSpec, TimerSpec
    from .models import Message, SendCommand
    from .plugin_types import (
        Amendment,
        BroadcastStream,
        GatewayContext,
        GatewayLoad,
        GroupChange,
        MessageType,
        OfflinePush,
        Operation,
        Outbound,
        Priority,
        Rejection,
    )
    from .services import Services
    from .settings import Settings

PROJECT = "imflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -------------------------------------------------------------------------------------------
# start-up


@hookspec
def imflow_configure(settings: Settings) -> None:
    """Called once per process with the effective settings, before anything is served.

    Declare your own settings with ``imflow_settings`` instead; this hook is for plugins that
    need imflow's. May be async. Results are ignored.
    """


@hookspec
def imflow_settings() -> BaseSettings:
    """This plugin's settings: a pydantic-settings object whose class has its own env prefix
    (``IMFLOW_<PLUGIN>_``, for example ``IMFLOW_RED_PACKETS_``), read when the plugin object is
    built. ``imflow config`` lists its fields next to imflow's own. Not async; called at start-up
    and by ``imflow config``.
    """


@hookspec
def imflow_startup(services: Services, role: str) -> None:
    """This process starts serving: called once, after storage is connected and before the
    first client or record is handled. ``services`` is the process's one ``Services`` object
    (settings, redis, node, archive, hooks, clock); ``role`` is ``"gateway"`` (a gateway whose
    agents run in workers), ``"worker"`` (a stream worker) or ``"serve"`` (gateway and agents in
    one process). Start what your plugin keeps running here. May be async. Results are ignored.
    """


@hookspec
def imflow_shutdown(services: Services, role: str) -> None:
    """This process stops: called once, before storage is closed, with the same ``services`` and
    ``role`` as ``imflow_startup``. Stop your tasks and let go of what you hold. May be async.
    Results are ignored.
    """


# -------------------------------------------------------------------------------------------
# what plugins add


@hookspec
def imflow_message_types() -> list[MessageType]:
    """Message types this plugin adds (besides the built-in ``text``).

    Return a list of ``MessageType``; results of all plugins are concatenated. A ``send``
    with an unregistered ``type`` is refused with ``bad_frame``. A type's ``validate``
    receives the body and returns it (possibly normalised) or raises ``ValueError``.
    """


@hookspec
def imflow_client_operations() -> list[Operation]:
    """Client operations this plugin adds to the WebSocket protocol.

    Return a list of ``Operation``; all plugins' lists are concatenated. An operation's name
    must contain a dot (``red_packet.grab``) so it never clashes with a built-in one.
    """


@hookspec
def imflow_http_routes() -> list[BaseRoute]:
    """Starlette routes this plugin adds to every gateway (``Route``, ``WebSocketRoute``, ``Mount``).

    Put them under ``/plugins/<plugin>/`` to stay clear of imflow's own. Lists are concatenated.
    """


@hookspec
def imflow_stream_agents() -> list[AgentSpec | TimerSpec]:
    """Agents and timers this plugin adds to every worker (and to ``imflow serve``).

    An ``AgentSpec`` names a topic (the app id is prefixed; the topic is created with the
    others) and a body ``async (context, records)`` that handles a batch at least once. A
    ``TimerSpec`` runs ``async (context)`` periodically on every worker. Lists are concatenated.
    """


# -------------------------------------------------------------------------------------------
# the message path


@hookspec
def imflow_before_send(command: SendCommand, gateway: GatewayContext | None) -> SendCommand | Rejection | None:
    """May this send go ahead? Called by the gateway before the message is queued, with the
    gateway's context (its Redis, load and hooks; declare ``gateway`` only if you need it).

    Return ``None`` to let it pass unchanged, a ``Rejection`` (error code, message, and for a
    limit ``retry_after_ms``) to refuse it, or a new ``SendCommand`` to replace it (for example
    a filtered body). A chain: each plugin gets the command as the plugins before it left it; a
    ``Rejection`` stops it (the later ones never run), ``None`` or a new command passes it on,
    so a plugin that rewrites a send never skips another's check.
    """


@hookspec
def imflow_after_persist(messages: list[Message], context: AgentContext) -> None:
    """Called by the ingest agent after a batch of messages is durable, in seq order, and
    before any client is told about them (no push or ACK has gone out yet).

    ``context`` is the agent's (Redis, settings, ``producer`` and ``topic()`` to feed an agent
    of your own). Kafka delivers at least once: the same message can come again, so what you
    do must be idempotent (key it by ``mid``). Results are ignored.
    """


@hookspec(firstresult=True)
def imflow_fan_out_policy(conversation: str, members: int, sender: str) -> str | None:
    """Write or read fan-out for a group message? Called by the ingest agent once per group and
    sender in each batch (async allowed), before the messages are stored.

    Return ``"write"`` (an inbox entry and unread update per member: cheap below a few hundred
    members), ``"read"`` (one stored copy, pushed to the members online, counts flushed every
    few seconds), or ``None`` for the default: read fan-out from
    ``IMFLOW_READ_FAN_OUT_THRESHOLD`` members up. ``firstresult``: the first answer decides;
    anything else is ignored. Either way the client sees the same frames, and a group may
    change mode between any two messages without a message lost or shown twice.
    Direct (one-to-one) conversations always use write fan-out and never reach this hook.
    """


@hookspec
def imflow_offline_push(pushes: list[OfflinePush], context: AgentContext) -> None:
    """Messages that reached users none of whose devices was connected, for a push notification
    (a webhook, FCM, APNs). Called by the ingest agent once per batch, after the batch's pushes
    went to the connected devices, with one ``OfflinePush`` per (user, message): write fan-out
    members, and in read fan-out groups only the members a message mentions (the others get
    their counts at their next sync). Conversations the user muted are left out.

    Best effort, like every push: at most once per delivery (a replay of a message delivered
    before is not pushed again). The agent awaits this hook: queue the work and return, never
    make a network call here. May be async. Results are ignored.
    """


@hookspec
def imflow_message_amended(amendment: Amendment, services: Services) -> None:
    """A message was recalled or edited (``amendment.kind``), once it is stored everywhere and
    its members' devices were told. Called once per change by the process that made it (a
    repeated recall or an edit to the same body changes nothing and calls nothing). May be
    async. Results are ignored.
    """


# -------------------------------------------------------------------------------------------
# groups


@hookspec
def imflow_group_changed(change: GroupChange, services: Services) -> None:
    """A group's membership or roles changed (created, members added or removed, a member left,
    a role set), once the change is stored. Called once per change by the gateway that made it.
    May be async. Results are ignored.
    """


# -------------------------------------------------------------------------------------------
# connections


@hookspec
def imflow_on_connect(user: str, node: str, connection: Outbound) -> None:
    """A connection of ``user`` was authenticated on gateway ``node``; ``connection`` is how to
    push to it (declare only the arguments you need). Results are ignored."""


@hookspec
def imflow_on_disconnect(user: str, node: str, connection: Outbound) -> None:
    """A connection of ``user`` on gateway ``node`` closed. Results are ignored."""


# -------------------------------------------------------------------------------------------
# broadcast streams (live rooms) and throttling


@hookspec
def imflow_broadcast_streams() -> list[BroadcastStream]:
    """Topics every gateway reads in full, each with the function that handles their records
    on the gateway (live rooms: every gateway hears every room message and pushes it to the
    viewers it holds). Called once at start-up, not async; the lists are concatenated."""


@hookspec(firstresult=True)
def imflow_admit_broadcast(stream: str, key: str, user: str, priority: Priority, gateway: GatewayContext) -> Rejection | None:
    """May ``user`` put a record of this priority on broadcast ``stream`` for ``key`` (a room)?
    Called by the plugin that owns the stream before it broadcasts, with the gateway's context.
    ``None`` admits it; a
    ``Rejection`` (with ``retry_after_ms``) refuses it. ``firstresult``; async allowed."""


@hookspec(firstresult=True)
def imflow_shape_broadcast(stream: str, key: str, messages: list[dict], load: GatewayLoad) -> list[dict] | None:
    """Which of a batch of broadcast messages (each with a ``priority``) every viewer of ``key``
    on this gateway gets, given the gateway's load: a per-viewer cap samples ordinary ones, a
    circuit breaker sheds them. Return the messages to deliver in order, or ``None`` for all.
    Called once per batch and key, not per viewer. ``firstresult``; async allowed."""


# the ``role`` of imflow_startup and imflow_shutdown
ROLES = ("gateway", "worker", "serve")

# called once at start-up (and by ``imflow config``), never async: lists are concatenated
REGISTRATION = frozenset({
    "imflow_settings", "imflow_message_types", "imflow_client_operations", "imflow_http_routes",
    "imflow_stream_agents", "imflow_broadcast_streams",
})


def names() -> list[str]:
    """The name of every hook, in the order of this module."""
    return [name for name, value in globals().items() if name.startswith("imflow_") and callable(value)]


def is_firstresult(name: str) -> bool:
    """Whether hook ``name`` stops at the first answer that is not None (its ``firstresult``)."""
    return bool(getattr(globals()[name], f"{PROJECT}_spec")["firstresult"])


__all__ = [*names(), "REGISTRATION", "ROLES", "PROJECT", "hookimpl", "hookspec", "is_firstresult", "names"]
