"""Token buckets in Redis: the one implementation behind every rate limit of the throttling plugin.

A bucket holds up to ``burst`` tokens and gains ``rate`` a second; each admitted action takes one.
The state lives in Redis (a hash ``tokens``, ``stamp``), so a bucket is shared by every gateway:
a limit per user holds however many gateways the user's connections are spread over. One Lua
script takes a token from several buckets at once, all or none, on the Redis server's clock (the
gateways' clocks may differ). Keys that one call takes from must share a Redis Cluster hash tag.

The takes asked for in one event-loop tick (by any connection's send) go to Redis together, one
script call each in one pipeline, in the order they were asked: each is answered as if it had
been made alone, and a refused take spends nothing, as before.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from imflow.plugin_api import queue_script, register_script, script

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis

# KEYS: the buckets.  ARGV[1]: now in ms, or '' for the server's clock; then rate, burst per key.
# Returns {0, 0} when every bucket gave a token, else {the ms until every one has one, the index
# (from 1) of the bucket that needs longest}, and then nothing is taken.
TAKE = """
local now = tonumber(ARGV[1])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local wait, limiting, levels, stamps = 0, 0, {}, {}
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens, stamp = tonumber(state[1]) or burst, tonumber(state[2]) or now
  levels[i] = math.min(burst, tokens + math.max(0, now - stamp) / 1000 * rate)
  stamps[i] = math.max(stamp, now)  -- a clock that stepped back never refills twice
  if levels[i] < 1 then
    local needs = math.max(1, math.ceil((1 - levels[i]) / rate * 1000))
    if needs > wait then
      wait, limiting = needs, i
    end
  end
end
if wait > 0 then
  return {wait, limiting}
end
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('HSET', key, 'tokens', tostring(levels[i] - 1), 'stamp', tostring(stamps[i]))
  -- a bucket left alone refills to its burst in burst / rate: it can go then
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
return {0, 0}
"""
SCRIPT = "throttle_take"
register_script(SCRIPT, TAKE)  # loaded the one way, like imflow's own (storage.scripts)


@dataclass(frozen=True)
class Bucket:
    """One limit for one holder: ``rate`` tokens a second (> 0), at most ``burst`` (>= 1) held.
    ``name`` says which limit it is (``user``, ``connection``, ``poster``, ``room``)."""

    name: str
    key: str
    rate: float
    burst: float


@dataclass(frozen=True)
class Refused:
    """No token was taken: ``bucket`` ran dry, and every bucket has one in ``retry_after_ms``."""

    bucket: Bucket
    retry_after_ms: int


async def take(redis: Redis, buckets: Sequence[Bucket], now_ms: int | None = None) -> Refused | None:
    """Take one token from each of ``buckets``, atomically, or from none of them.

    Returns None when the action may go ahead, else a ``Refused`` naming the bucket that ran dry
    and how many milliseconds (>= 1) until every bucket holds a token again. ``now_ms`` (for
    tests) replaces the Redis server's clock. All keys must hash to one Redis Cluster slot (give
    them one hash tag); raises ``redis.RedisError`` when Redis fails.
    """
    args: list[Any] = ["" if now_ms is None else now_ms]
    for bucket in buckets:
        args += [bucket.rate, bucket.burst]
    takes = redis.__dict__.get("_imflow_throttle_takes")
    if takes is None:  # one per client: a client belongs to one event loop
        takes = redis.__dict__["_imflow_throttle_takes"] = Takes(redis)
    wait, limiting = await takes.take([bucket.key for bucket in buckets], args)
    return Refused(buckets[int(limiting) - 1], int(wait)) if wait else None


class Takes:
    """The takes of one Redis client asked for in one event-loop tick, run in one pipeline.

    The first ``take`` of a tick leads: it lets the loop turn once (no timer: a lone take waits
    for nothing more) while the tick's other takes join, then runs them all — itself, when
    alone (one script call, as before); in a task, when others wait on it too, so that the
    leader's caller being cancelled cancels nobody else's. A take whose script Redis had lost
    runs again once it is loaded; one that ran is never run twice (it would spend a second
    token). An error of one take's script fails that take; a Redis that cannot be reached fails
    every take of the batch with redis-py's error.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.joining: list[tuple[list[str], list[Any], asyncio.Future[list[Any]]]] | None = None
        self.running: set[asyncio.Task[None]] = set()  # strong references until each run ends

    async def take(self, keys: list[str], args: list[Any]) -> list[Any]:
        """The script's reply ``[wait, limiting]`` for one take from the buckets ``keys``."""
        loop = asyncio.get_running_loop()
        if self.joining is not None:  # this tick has a leader: its pipeline takes this one too
            answer: asyncio.Future[list[Any]] = loop.create_future()
            self.joining.append((keys, args, answer))
            return await answer
        self.joining = []
        try:
            await asyncio.sleep(0)
        except BaseException:  # the leader's caller was cancelled: the others' takes go on
            joined, self.joining = self.joining, None
            if joined:
                self._start(joined)
            raise
        joined, self.joining = self.joining, None
        if not joined:
            return await script(self.redis, SCRIPT)(keys=keys, args=args)
        mine: asyncio.Future[list[Any]] = loop.create_future()
        self._start([(keys, args, mine), *joined])
        return await mine

    def _start(self, batch: list[tuple[list[str], list[Any], asyncio.Future[list[Any]]]]) -> None:
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _run(self, batch: list[tuple[list[str], list[Any], asyncio.Future[list[Any]]]]) -> None:
        try:
            found = await self._replies(batch)
        except asyncio.CancelledError:
            for *_, answer in batch:
                answer.cancel()
            raise
        except Exception as exc:  # Redis unavailable: every caller's error (a future re-raises it with its own traceback)
            found = [exc for _ in batch]
        for (*_, answer), reply in zip(batch, found, strict=True):
            if not answer.done():  # else its caller was cancelled
                if isinstance(reply, Exception):
                    answer.set_exception(reply)
                else:
                    answer.set_result(reply)

    async def _replies(self, batch: list[tuple[list[str], list[Any], asyncio.Future[list[Any]]]]) -> list[Any]:
        """Each take's reply (or its error), in order."""
        found: list[Any] = [None] * len(batch)
        todo = list(range(len(batch)))
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args, _ = batch[i]
                    queue_script(pipe, SCRIPT, keys=keys, args=args)
                replies = await pipe.execute(raise_on_error=False)
            for i, reply in zip(todo, replies, strict=True):
                found[i] = reply
            todo = [i for i in todo if isinstance(found[i], NoScriptError)]
            if not todo or attempt == 2:
                break
            await self.redis.script_load(TAKE)  # where Redis lost it: those takes did not run
        return found
