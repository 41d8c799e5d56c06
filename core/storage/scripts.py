"""The Lua scripts of core/storage/lua.

Direct calls use redis-py's Script (EVALSHA, reloads on NOSCRIPT). In pipelines we queue
EVALSHA ourselves: redis-py's pipeline would ask SCRIPT EXISTS before every execute, one more
round trip per batch; ``run_pipeline`` loads the scripts and retries once if Redis lost them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.commands.core import AsyncScript

T = TypeVar("T")


_REGISTERED: dict[str, str] = {}  # name -> source of scripts that live elsewhere (plugins)


def register(name: str, source: str) -> None:
    """Make a script that lives outside core/storage/lua (a plugin's) callable by ``name`` with
    ``script``/``queue_script`` and loaded by ``load_scripts``, the same way as imflow's own.

    Raises ValueError if ``name`` is taken by a different script.
    """
    if (name in _REGISTERED and _REGISTERED[name] != source) or (name not in _REGISTERED and _bundled(name)):
        raise ValueError(f"a different Lua script is already called {name!r}")
    _REGISTERED[name] = source


def _bundled(name: str) -> bool:
    return resources.files("imflow.core.storage").joinpath("lua", f"{name}.lua").is_file()


def lua_source(name: str) -> str:
    if name in _REGISTERED:
        return _REGISTERED[name]
    return _bundled_source(name)


@cache
def _bundled_source(name: str) -> str:
    return resources.files("imflow.core.storage").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def lua_sha(name: str) -> str:
    sha = _SHAS.get(name)
    if sha is None:  # computed once per name: pipelines queue a script per message and member
        sha = _SHAS[name] = hashlib.sha1(lua_source(name).encode()).hexdigest()
    return sha


_SHAS: dict[str, str] = {}


def script(redis: Redis, name: str) -> AsyncScript:
    """The named script bound to this client (cached on the client object)."""
    cache_ = redis.__dict__.setdefault("_imflow_scripts", {})
    if name not in cache_:
        cache_[name] = redis.register_script(lua_source(name))
    return cache_[name]


class Reply:
    """A handle on the reply of one command queued in a pipeline run by ``run_pipeline``:
    ``value`` is that command's reply once the pipeline has run (callers never count indices)."""

    __slots__ = ("_index", "_pipe")

    def __init__(self, pipe: Pipeline, index: int) -> None:
        self._pipe = pipe  # run_pipeline leaves the replies on it (one assignment for every handle)
        self._index = index

    @property
    def value(self) -> Any:
        replies = self._pipe.__dict__.get(_REPLIES)
        if replies is None:
            raise RuntimeError("the pipeline of this reply has not run yet")
        return replies[self._index]


_REPLIES = "_imflow_replies"


def reply(pipe: Pipeline) -> Reply:
    """A handle on the reply of the command queued last on ``pipe``."""
    return Reply(pipe, len(pipe) - 1)  # len: a single server's and a cluster's pipelines alike


def queue_script(pipe: Pipeline, name: str, keys: list[str], args: list[Any]) -> Reply:
    """Queue one script call in a pipeline run by ``run_pipeline``; returns a handle on its reply."""
    # execute_command, not pipe.evalsha: a cluster pipeline refuses the method (it routes the
    # command itself by the slot of its keys, which must be one)
    pipe.execute_command("EVALSHA", lua_sha(name), len(keys), *keys, *args)
    return Reply(pipe, len(pipe) - 1)  # reply(pipe), inlined: once per member and message


async def run_pipeline(redis: Redis, fill: Callable[[Pipeline], Awaitable[T] | T]) -> tuple[T, list[Any]]:
    """Fill a fresh non-transactional pipeline, execute it, return (fill's result, replies).

    If Redis has lost our scripts (a restart, SCRIPT FLUSH), load them and run the pipeline
    again. That is safe only if nothing in it ran the first time: Redis loses all scripts at
    once, but a Redis that holds an older imflow's scripts lacks only the new ones, and then the
    pipeline's other scripts and commands (counts) would run twice. So a client loads every
    script before its first pipeline.
    """
    await ensure_loaded(redis)
    for attempt in (1, 2):
        async with redis.pipeline(transaction=False) as pipe:
            filled = fill(pipe)
            if isinstance(filled, Awaitable):
                filled = await filled
            try:
                replies = await pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                await load_scripts(redis)
                continue
            pipe.__dict__[_REPLIES] = replies  # what every Reply of this pipeline reads
            return filled, replies
    raise AssertionError("unreachable")


_LOADED = "_imflow_scripts_loaded"  # set on a client once it has loaded every script


async def ensure_loaded(redis: Redis) -> None:
    """Load every script through this client once, before its first pipeline (``run_pipeline``
    says why)."""
    if not getattr(redis, _LOADED, False):
        await load_scripts(redis)
        setattr(redis, _LOADED, True)


async def load_scripts(redis: Redis) -> None:
    for path in resources.files("imflow.core.storage").joinpath("lua").iterdir():
        if path.name.endswith(".lua"):
            await redis.script_load(lua_source(path.name.removesuffix(".lua")))
    for source in _REGISTERED.values():
        await redis.script_load(source)
