"""Calling plugin hooks through pluggy, so that one failing plugin never takes a process down.

Every call goes through pluggy (``manager.hook.<name>(...)``), so hook wrappers and
``add_hookcall_monitoring`` see it. pluggy itself would run the implementations in one go and
end the call for everyone at the first exception, and it cannot await. So each implementation
is wrapped when its plugin is registered: calling it returns a ``Pending`` call, nothing runs
yet, and pluggy returns the list of them in its order (tryfirst/trylast respected). The façade
``Hooks.call`` then runs them one by one: a failing one is logged with its plugin's name and
skipped; for a ``firstresult`` hook (the flag in core/hookspecs.py, never the caller's choice)
the ones after the first answer that is not None never run; ``imflow_before_send`` is a chain
(``Hooks.chain``): each implementation gets the command as the previous one left it. At pluggy's level no hook is
``firstresult``, or a pending call (never None) would end every call.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, cast

import pluggy

from . import hookspecs
from .plugin_types import Rejection
from .storage.redis_client import STORAGE_UNAVAILABLE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

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
    )
    from .services import Services
    from .settings import Settings

log = logging.getLogger(__name__)


async def await_me_maybe(value: Any) -> Any:
    """``value``, awaited first if it is awaitable (datasette's helper)."""
    return await value if inspect.isawaitable(value) else value


class Pending:
    """One hook implementation's call, not made yet: ``await`` it (or ``run_sync()`` for a
    registration hook) to make it. Dropping it unawaited leaves nothing behind."""

    __slots__ = ("argnames", "args", "function", "hook", "plugin")

    def __init__(
        self, plugin: str, hook: str, function: Callable[..., Any], args: tuple[Any, ...], argnames: tuple[str, ...] = ()
    ) -> None:
        self.plugin, self.hook, self.function, self.args, self.argnames = plugin, hook, function, args, argnames

    def with_argument(self, name: str, value: Any) -> Pending:
        """This call with argument ``name`` set to ``value`` (itself if the implementation does
        not take ``name``): how a chained hook hands on what the previous implementation left."""
        if name not in self.argnames:
            return self
        args = list(self.args)
        args[self.argnames.index(name)] = value
        return Pending(self.plugin, self.hook, self.function, tuple(args), self.argnames)

    def run_sync(self) -> Any:
        """The implementation's result; raises TypeError if it is async (it must not be)."""
        value = self.function(*self.args)
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()
            raise TypeError(f"{self.hook} must not be async: it runs at start-up")
        return value

    async def run(self) -> Any:
        return await await_me_maybe(self.function(*self.args))

    def __await__(self) -> Any:
        return self.run().__await__()

    def __repr__(self) -> str:
        return f"<Pending {self.plugin}.{self.hook}>"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with every implementation made lazy at registration (see the module's
    docstring). Hook wrappers (``wrapper=True``) stay as they are: they see the list of
    ``Pending`` calls and may reorder, drop or add to it."""

    def parse_hookspec_opts(self, module_or_class: Any, name: str) -> Any:
        opts = super().parse_hookspec_opts(module_or_class, name)
        if opts is not None and opts.get("firstresult"):
            opts = {**opts, "firstresult": False}  # the façade stops at the first answer
        return opts

    def register(self, plugin: object, name: str | None = None) -> str | None:
        plugin_name = super().register(plugin, name)
        if plugin_name is not None:
            for caller in self.get_hookcallers(plugin) or ():
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                        lazy = _lazy(plugin_name, caller.name, impl.function, tuple(impl.argnames))
                        # argnames were read from the real function at registration: pluggy
                        # still passes just the arguments the implementation declares
                        object.__setattr__(impl, "function", lazy)
        return plugin_name


def _lazy(plugin: str, hook: str, function: Callable[..., Any], argnames: tuple[str, ...]) -> Callable[..., Pending]:
    def pending(*args: Any) -> Pending:
        return Pending(plugin, hook, function, args, argnames)

    pending.__wrapped__ = function  # type: ignore[attr-defined]
    return pending


def empty_manager() -> PluginManager:
    """A plugin manager with imflow's hookspecs and no plugins."""
    manager = PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


def _failed(call: Pending, exc: Exception) -> None:
    """Log a failing implementation (called inside its ``except``): an outage without a traceback."""
    if isinstance(exc, STORAGE_UNAVAILABLE):  # an outage, not a plugin bug
        log.warning("plugin %s: storage unavailable in %s (%s); skipped", call.plugin, call.hook, exc)
    else:
        log.error("plugin %s failed in %s; skipped", call.plugin, call.hook, exc_info=exc)


class Hooks:
    """The hooks of one plugin manager. ``Hooks()`` has no plugins.

    Call a hook with ``await hooks.call.before_send(command=..., gateway=...)`` (one typed
    method per hook, ``HookCalls``).
    """

    def __init__(self, manager: pluggy.PluginManager | None = None) -> None:
        self.manager = manager or empty_manager()
        self.call = HookCalls(self)

    def _pending(self, name: str, kwargs: dict[str, Any]) -> list[Pending]:
        """The pending calls of hook ``name``, in pluggy's order, through pluggy (wrappers, monitoring)."""
        return cast("list[Pending]", getattr(self.manager.hook, name)(**kwargs))

    async def _answers(self, name: str, kwargs: dict[str, Any], stop_at_first: bool) -> list[tuple[str, Any]]:
        """(plugin, result) of the implementations that answered (not None), run in order."""
        answers: list[tuple[str, Any]] = []
        for call in self._pending(name, kwargs):
            try:
                value = await call
            except Exception as exc:
                _failed(call, exc)
                continue
            if value is not None:
                answers.append((call.plugin, value))
                if stop_at_first:  # the rest are never run (never created, so nothing to close)
                    break
        return answers

    async def dispatch(self, name: str, **kwargs: Any) -> Any:
        """Call hook ``name``: the first answer (or None) for a ``firstresult`` hook, else the
        (plugin, result) pairs of every implementation that returned something."""
        if hookspecs.is_firstresult(name):
            answers = await self._answers(name, kwargs, stop_at_first=True)
            return answers[0][1] if answers else None
        return await self._answers(name, kwargs, stop_at_first=False)

    async def chain(self, name: str, argument: str, stop: Callable[[Any], bool], **kwargs: Any) -> Any:
        """Call hook ``name`` as a chain on ``kwargs[argument]``: each implementation gets it as
        the previous one left it; None passes it on unchanged, an answer for which ``stop`` is
        true ends the chain and is returned, any other answer replaces it for the next ones.
        Returns the value as the last one left it, or None if no implementation answered."""
        value, changed = kwargs[argument], False
        for call in self._pending(name, kwargs):
            try:
                answer = await call.with_argument(argument, value)
            except Exception as exc:
                _failed(call, exc)
                continue
            if answer is None:
                continue
            if stop(answer):  # the rest are never run
                return answer
            value, changed = answer, True
        return value if changed else None

    def registered(self, name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """(plugin, result) of a registration hook (not async), failing ones logged and skipped."""
        answers = []
        for call in self._pending(name, kwargs):
            try:
                value = call.run_sync()
            except Exception as exc:
                _failed(call, exc)
                continue
            if value is not None:
                answers.append((call.plugin, value))
        return answers

    def collected(self, name: str, **kwargs: Any) -> list[Any]:
        """The lists returned by a registration hook, concatenated."""
        out: list[Any] = []
        for _, value in self.registered(name, **kwargs):
            out.extend(cast("Iterable[Any]", value))
        return out

    def has_implementations(self, name: str) -> bool:
        """Whether any registered plugin implements hook ``name`` (so a caller can skip building
        its arguments)."""
        return bool(getattr(self.manager.hook, name).get_hookimpls())

    def plugins(self) -> list[tuple[str, Any]]:
        """(name, plugin object) of every registered plugin."""
        return [(name, plugin) for name, plugin in self.manager.list_name_plugin() if plugin is not None]


class HookCalls:
    """``hooks.call``: one typed method per hook of core/hookspecs.py, with its arguments by
    name. Whether a call stops at the first answer comes from the hookspec."""

    def __init__(self, hooks: Hooks) -> None:
        self._hooks = hooks

    # start-up and shutdown

    async def configure(self, *, settings: Settings) -> None:
        await self._hooks.dispatch("imflow_configure", settings=settings)

    def settings(self) -> list[tuple[str, BaseSettings]]:
        """(plugin name, its settings object) of every plugin that declares settings."""
        return self._hooks.registered("imflow_settings")

    async def startup(self, *, services: Services, role: str) -> None:
        await self._hooks.dispatch("imflow_startup", services=services, role=role)

    async def shutdown(self, *, services: Services, role: str) -> None:
        await self._hooks.dispatch("imflow_shutdown", services=services, role=role)

    # what plugins add (registration hooks: not async, lists concatenated)

    def message_types(self) -> list[MessageType]:
        return self._hooks.collected("imflow_message_types")

    def client_operations(self) -> list[Operation]:
        return self._hooks.collected("imflow_client_operations")

    def http_routes(self) -> list[BaseRoute]:
        return self._hooks.collected("imflow_http_routes")

    def stream_agents(self) -> list[AgentSpec | TimerSpec]:
        return self._hooks.collected("imflow_stream_agents")

    def broadcast_streams(self) -> list[BroadcastStream]:
        return self._hooks.collected("imflow_broadcast_streams")

    # the message path

    async def before_send(self, *, command: SendCommand, gateway: GatewayContext | None) -> SendCommand | Rejection | None:
        """A chain (``Hooks.chain``): the first Rejection, else the command as the last plugin
        that rewrote it left it, else None (nobody changed it). Every implementation sees the
        command as the ones before it left it, so a rewrite never skips a later check."""
        return cast("SendCommand | Rejection | None", await self._hooks.chain(
            "imflow_before_send", "command", lambda answer: isinstance(answer, Rejection), command=command, gateway=gateway))

    async def after_persist(self, *, messages: list[Message], context: AgentContext) -> None:
        await self._hooks.dispatch("imflow_after_persist", messages=messages, context=context)

    async def fan_out_policy(self, *, conversation: str, members: int, sender: str) -> str | None:
        return cast("str | None", await self._hooks.dispatch(
            "imflow_fan_out_policy", conversation=conversation, members=members, sender=sender))

    async def offline_push(self, *, pushes: list[OfflinePush], context: AgentContext) -> None:
        await self._hooks.dispatch("imflow_offline_push", pushes=pushes, context=context)

    async def message_amended(self, *, amendment: Amendment, services: Services) -> None:
        await self._hooks.dispatch("imflow_message_amended", amendment=amendment, services=services)

    # groups

    async def group_changed(self, *, change: GroupChange, services: Services) -> None:
        await self._hooks.dispatch("imflow_group_changed", change=change, services=services)

    # connections

    async def on_connect(self, *, user: str, node: str, connection: Outbound) -> None:
        await self._hooks.dispatch("imflow_on_connect", user=user, node=node, connection=connection)

    async def on_disconnect(self, *, user: str, node: str, connection: Outbound) -> None:
        await self._hooks.dispatch("imflow_on_disconnect", user=user, node=node, connection=connection)

    # broadcast streams

    async def admit_broadcast(self, *, stream: str, key: str, user: str, priority: Priority,
                              gateway: GatewayContext) -> Rejection | None:
        return cast("Rejection | None", await self._hooks.dispatch(
            "imflow_admit_broadcast", stream=stream, key=key, user=user, priority=priority, gateway=gateway))

    async def shape_broadcast(self, *, stream: str, key: str, messages: list[dict], load: GatewayLoad) -> list[dict] | None:
        return cast("list[dict] | None", await self._hooks.dispatch(
            "imflow_shape_broadcast", stream=stream, key=key, messages=messages, load=load))
