"""Building the plugin manager: built-in plugins and third-party ones, registered the same way.

Built-ins are listed in DEFAULT_PLUGINS; third-party plugins arrive through the ``imflow``
entry-point group of installed packages. ``IMFLOW_DISABLED_PLUGINS`` names plugins to leave out.
A plugin that is a class is instantiated once per plugin manager, so two managers in one
process (tests build several) share no plugin state; a module is registered as it is.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import imflow
from imflow.core.plugin_calls import Hooks, empty_manager
from imflow.core.settings import described

if TYPE_CHECKING:

    from imflow.core.settings import Settings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "imflow"
DEFAULT_PLUGINS: dict[str, str] = {  # name -> "module:class", as an entry point names it
    "red_packets": "imflow.plugins.red_packets:RedPackets",
    "live_rooms": "imflow.plugins.live_rooms:LiveRooms",
    "throttling": "imflow.plugins.throttling:Throttling",
    "recall_edit": "imflow.plugins.recall_edit:RecallEdit",
    "typing": "imflow.plugins.typing:Typing",
    "webhook": "imflow.plugins.webhook:Webhook",
    "attachments": "imflow.plugins.attachments:Attachments",
}


def _built(plugin: Any) -> Any:
    """A plugin object: a class is instantiated (one object per manager), anything else is kept."""
    return plugin() if isinstance(plugin, type) else plugin


def _load(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def make_hooks(settings: Settings, extra: list[tuple[str, Any]] | None = None) -> Hooks:
    """A fresh plugin manager for these settings (never a global one), wrapped for isolated calls.

    ``extra`` registers (name, plugin) pairs too, as tests and embedding code do. A plugin's
    settings are read when its object is built: raises pydantic.ValidationError if they are invalid.
    """
    manager = empty_manager()
    disabled = settings.disabled_plugin_names
    for name, reference in DEFAULT_PLUGINS.items():
        if name not in disabled:
            manager.register(_built(_load(reference)), name=name)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in disabled or manager.has_plugin(entry_point.name):
            continue
        try:
            plugin = _built(entry_point.load())
        except Exception:  # a broken package must not stop imflow; say which one it was
            log.exception("plugin %s (%s) failed to load; skipped", entry_point.name, entry_point.value)
            continue
        manager.register(plugin, name=entry_point.name)
    for name, plugin in extra or ():
        if name not in disabled:
            manager.register(_built(plugin), name=name)
    manager.check_pending()  # a misspelled hook name fails here, loudly
    return Hooks(manager)


def describe(hooks: Hooks) -> list[dict[str, Any]]:
    """Name, version, origin and implemented hooks of every loaded plugin (for ``imflow plugins``)."""
    distributions = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.dist is not None:
            distributions[entry_point.name] = (entry_point.dist.name, entry_point.dist.version)
    rows = []
    for name, plugin in hooks.plugins():
        caller_names = sorted(caller.name for caller in hooks.manager.get_hookcallers(plugin) or ())
        if name in DEFAULT_PLUGINS:
            origin, version = "built-in", imflow.__version__
        elif name in distributions:
            origin, version = f"package {distributions[name][0]}", distributions[name][1]
        else:
            origin, version = "registered in code", "-"
        rows.append({"name": name, "version": version, "origin": origin, "hooks": caller_names})
    return rows


def describe_settings(hooks: Hooks) -> list[dict[str, Any]]:
    """Every setting plugins declare (``imflow_settings``), as ``Settings.described`` gives imflow's
    own: plugin, name, effective value (secrets masked), environment variable, description."""
    rows: list[dict[str, Any]] = []
    for plugin, settings in hooks.call.settings():
        rows.extend({"plugin": plugin, **row} for row in described(settings))
    return rows


