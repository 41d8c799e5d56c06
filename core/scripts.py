"""The Lua scripts, loaded once per client. redis-py's Script uses EVALSHA and reloads on NOSCRIPT."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.commands.core import AsyncScript


@cache
def lua_source(name: str) -> str:
    return resources.files("imflow.core").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def script(redis: Redis | Pipeline, name: str) -> AsyncScript:
    """The named script bound to this client or pipeline (cached on the object).

    Called on a pipeline, pass ``client=pipe`` when invoking it so it is queued there.
    """
    cache_ = redis.__dict__.setdefault("_imflow_scripts", {})
    if name not in cache_:
        cache_[name] = redis.register_script(lua_source(name))
    return cache_[name]
