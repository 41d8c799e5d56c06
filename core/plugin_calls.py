"""Calling plugin hooks so that one failing plugin never takes a process down.

pluggy calls every implementation of a hook in one go, and the first exception ends the
call for everyone. Here each implementation is called on its own: one that raises is logged
with its plugin's name and skipped. Async implementations are awaited (datasette's
``await_me_maybe``), so agents and endpoints call hooks the same way.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import pluggy

from . import hookspecs
from .storage.redis_client import STORAGE_UNAVAILABLE

log = logging.getLogger(__name__)


async def await_me_maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def empty_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    return manager


class Hooks:
    """The hooks of a plugin manager, called with isolation. ``Hooks()`` has no plugins."""

    def __init__(self, manager: pluggy.PluginManager | None = None) -> None:
        self.manager = manager or empty_manager()

    def _implementations(self, name: str) -> list[pluggy.HookImpl]:
        # pluggy's order: last registered first (tryfirst/trylast respected)
        return list(reversed(getattr(self.manager.hook, name).get_hookimpls()))

    async def _answers(self, name: str, kwargs: dict[str, Any]) -> AsyncIterator[tuple[str, Any]]:
        """(plugin name, result) of each implementation in turn; a failing one is logged and skipped."""
        for impl in self._implementations(name):
            try:
                value = await await_me_maybe(impl.function(*[kwargs[arg] for arg in impl.argnames]))
            except STORAGE_UNAVAILABLE as exc:  # an outage, not a plugin bug: no traceback
                log.warning("plugin %s: storage unavailable in %s (%s); skipped", impl.plugin_name, name, exc)
                continue
            except Exception:
                log.exception("plugin %s failed in %s; skipped", impl.plugin_name, name)
                continue
            yield impl.plugin_name, value

    async def results(self, name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """(plugin name, result) of every implementation that returned something."""
        return [(plugin, value) async for plugin, value in self._answers(name, kwargs) if value is not None]

    async def call(self, name: str, **kwargs: Any) -> None:
        """Every implementation, results ignored."""
        await self.results(name, **kwargs)

    async def first(self, name: str, **kwargs: Any) -> Any:
        """The first result that is not None (``firstresult`` hooks); later ones are not called."""
        async with contextlib.aclosing(self._answers(name, kwargs)) as answers:
            async for _, value in answers:
                if value is not None:
                    return value
        return None

    def collect_sync(self, name: str, **kwargs: Any) -> list[Any]:
        """Concatenate the lists returned by a registration hook (called at start-up, not async)."""
        out: list[Any] = []
        for impl in self._implementations(name):
            try:
                value = impl.function(*[kwargs[arg] for arg in impl.argnames])
                if inspect.isawaitable(value):
                    value.close()
                    raise TypeError(f"{name} must not be async: it runs at start-up")
            except Exception:
                log.exception("plugin %s failed in %s; skipped", impl.plugin_name, name)
                continue
            out.extend(value or ())
        return out

    def plugins(self) -> list[tuple[str, Any]]:
        return [(name, plugin) for name, plugin in self.manager.list_name_plugin() if plugin is not None]
