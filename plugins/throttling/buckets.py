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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imflow.plugin_api import TickBatch, queue_script, register_script, run_each

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline

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
        takes = redis.__dict__["_imflow_throttle_takes"] = TickBatch(lambda items: run_each(redis, items, _queue_take))
    # one script call each, in the order asked; one that ran is never run again (a second token)
    ((wait, limiting),) = await takes.call(([bucket.key for bucket in buckets], args))
    return Refused(buckets[int(limiting) - 1], int(wait)) if wait else None


def _queue_take(pipe: Pipeline, take: tuple[list[str], list[Any]]) -> None:
    keys, args = take
    queue_script(pipe, SCRIPT, keys=keys, args=args)
