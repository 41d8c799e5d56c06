"""The one object every service function of core/ takes: what it may use of the process it runs in.

As datasette hands every hook its one ``datasette``, a service gets storage (Redis), the archive
reader, the plugin hooks, the settings, this node's name and a clock from here, never from a
global or a callback into a layer above. Gateways and workers each build one at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .ids import now_ms
from .plugin_calls import Hooks

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio import Redis

    from .settings import Settings
    from .storage.archive import ArchiveReader


@dataclass
class Services:
    """What a service needs: ``redis`` (live state), ``archive`` (the history in the lake; None
    where this process serves no history), ``hooks`` (the plugins of this process), ``settings``, ``node``
    (this gateway's or worker's name) and ``clock`` (ms since the epoch; tests replace it)."""

    settings: Settings
    redis: Redis
    node: str = ""
    archive: ArchiveReader | None = None
    hooks: Hooks = field(default_factory=Hooks)
    clock: Callable[[], int] = now_ms
