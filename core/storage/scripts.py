"""The Lua scripts of core/storage/lua.

Direct calls use redis-py's Script (EVALSHA, reloads on NOSCRIPT). In pipelines we queue
EVALSHA ourselves: redis-py's pipeline would ask SCRIPT EXISTS before every execute, one more
round trip per batch; ``run_pipeline`` loads the scripts and retries once if Redis lost them.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from redis.exceptions import NoScriptError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.commands.core import AsyncScript

T = TypeVar("T")
Item = TypeVar("Item")
Answer = TypeVar("Answer")


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
    source = resources.files("imflow.core.storage").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    # a line "--!include _piece.lua" takes in a piece of Lua several scripts share (one copy of it)
    return _INCLUDE.sub(lambda found: _bundled_source(found[1]), source)


_INCLUDE = re.compile(r"^--!include (\w+)\.lua$", re.MULTILINE)


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


class TickBatch(Generic[Item, Answer]):
    """The calls made in one event-loop tick, from any task, answered by one call of ``run``.

    The first ``call`` of a tick leads: it lets the loop turn once (no timer: a lone call waits
    for nothing more) while the tick's other calls join, then hands ``run(items)`` the lot —
    itself, when alone; a task, when others wait on it too, so that the leader's caller being
    cancelled cancels nobody else's. ``run`` answers each item in order, with its answer or
    the exception that failed that item alone; an exception out of ``run`` itself (Redis
    unavailable) fails every call of the batch with it.
    """

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Answer | Exception]]]) -> None:
        self.run = run
        self.joining: list[tuple[Item, asyncio.Future[Answer]]] | None = None  # the leader's, this tick
        self.running: set[asyncio.Task[None]] = set()  # strong references until each run ends

    async def call(self, item: Item) -> Answer:
        """``item``'s answer from the run of this tick's batch; raises what failed it."""
        if self.joining is not None:  # this tick has a leader: its run answers this item too
            answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            self.joining.append((item, answer))
            return await answer
        self.joining = []
        try:
            await asyncio.sleep(0)
        except BaseException:  # the leader's caller was cancelled: the others' run goes on
            joined, self.joining = self.joining, None
            if joined:
                self._start(joined)
            raise
        joined, self.joining = self.joining, None
        if not joined:
            found = (await self.run([item]))[0]
            if isinstance(found, Exception):
                raise found
            return found
        mine: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._start([(item, mine), *joined])
        return await mine

    def _start(self, batch: list[tuple[Item, asyncio.Future[Answer]]]) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(batch))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _answer(self, batch: list[tuple[Item, asyncio.Future[Answer]]]) -> None:
        try:
            answers = await self.run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, answer in batch:
                answer.cancel()
            raise
        except Exception as exc:  # Redis unavailable: every caller's error (a future re-raises it with its own traceback)
            answers = [exc for _ in batch]
        for (_, answer), found in zip(batch, answers, strict=True):
            if answer.done():  # its caller was cancelled
                continue
            if isinstance(found, Exception):
                answer.set_exception(found)
            else:
                answer.set_result(found)


async def run_each(
    redis: Redis, items: list[Item], queue: Callable[[Pipeline, Item], object]
) -> list[list[Any] | Exception]:
    """Run the commands ``queue(pipe, item)`` queues for each item in one non-transactional
    pipeline; each item's replies, or the error one of its commands got (that item's alone).

    Items whose scripts Redis had lost (a restart, a failover) run again, those only, once the
    scripts are loaded: a command that ran is never run twice. Raises what the pipeline raises
    when Redis cannot be reached (``redis_client.STORAGE_UNAVAILABLE``).
    """
    await ensure_loaded(redis)  # a Redis with only some of our scripts would run the rest twice
    found: list[list[Any] | Exception] = [[] for _ in items]
    todo = list(range(len(items)))
    for attempt in (1, 2):
        async with redis.pipeline(transaction=False) as pipe:
            spans = []
            for i in todo:
                start = len(pipe)
                queue(pipe, items[i])
                spans.append((i, start, len(pipe)))
            replies = await pipe.execute(raise_on_error=False)
        lost = []
        for i, start, end in spans:
            mine = replies[start:end]
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in mine):
                lost.append(i)
                continue
            error = next((r for r in mine if isinstance(r, Exception)), None)
            found[i] = error if error is not None else mine
        if not lost:
            break
        await load_scripts(redis)
        todo = lost
    return found
