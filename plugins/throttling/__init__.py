"""Throttling and circuit breaking (R14), as a plugin.

- **Send limits**: token buckets per user (shared by all gateways, in Redis) and per connection
  (in the gateway). A refused send gets ``throttle.rate_limited`` with ``retry_after_ms``.
- **Room inbound cap**: ordinary posts into one room, per second, over all gateways
  (``throttle.room_busy`` with ``retry_after_ms``); high-priority posts are never refused.
- **Per-viewer delivered cap**: at most ``IMFLOW_THROTTLE_VIEWER_CAP`` room messages per
  second reach a viewer; high-priority ones (gifts, red packets, the host) always, ordinary
  chat sampled evenly to fill the rest. One decision per room and batch on a gateway, so it
  costs nothing per viewer.
- **Circuit breaker**: when the gateway's event loop lags or its outbound queues fill past a
  threshold, it opens and sheds all low-priority room traffic; after a cool-down it lets it
  through again (half-open) and closes once the load stays below the thresholds.

Counts of sampled and shed messages and the breaker's state are Prometheus metrics (/metrics).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge
from pydantic_settings import BaseSettings, SettingsConfigDict

from imflow.core.hookspecs import hookimpl
from imflow.core.models import SendCommand
from imflow.core.plugin_types import GatewayContext, GatewayLoad, Outbound, Priority, Rejection

log = logging.getLogger(__name__)


class ThrottleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMFLOW_THROTTLE_", env_file=".env", extra="ignore")
    user_rate: float = 20.0  # sends per second per user, all devices
    user_burst: int = 40
    connection_rate: float = 10.0  # sends per second per connection
    connection_burst: int = 20
    room_inbound_rate: int = 2_000  # ordinary posts per second into one room
    post_rate: float = 5.0  # room posts per second per user on a gateway, any priority
    post_burst: int = 10
    viewer_cap: float = 40.0  # room messages per second a viewer receives
    breaker_lag_ms: float = 250.0
    breaker_queued_per_connection: float = 200.0
    breaker_cooldown_s: float = 5.0


settings = ThrottleSettings()
SAMPLED = Counter("imflow_throttle_sampled", "Room messages left out by the per-viewer cap (per batch)", ["stream"])
SHED = Counter("imflow_throttle_shed", "Room messages shed by the open circuit breaker (per batch)", ["stream"])
REFUSED = Counter("imflow_throttle_refused", "Sends and posts refused by a rate limit", ["limit"])
BREAKER = Gauge("imflow_throttle_breaker_open", "1 while the circuit breaker sheds low-priority traffic")


@dataclass
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take`` answers 0 or the ms until one is there."""

    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens, self.stamp = self.burst, self.clock()

    def take(self) -> int:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, int((1 - self.tokens) / self.rate * 1000))


# The per-user bucket lives in Redis so that all of a user's devices on all gateways share it.
USER_BUCKET = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - stamp) / 1000 * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) / rate * 1000) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return wait
"""


class Breaker:
    """Closed → open when the load passes a threshold; open → half-open after the cool-down;
    half-open → closed if the load stays below, open again if not."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.state = "closed"
        self.opened_at = 0.0

    def overloaded(self, load: GatewayLoad) -> bool:
        per_connection = load.queued_frames / max(1, load.connections)
        return load.loop_lag_ms > settings.breaker_lag_ms or per_connection > settings.breaker_queued_per_connection

    def admits_low(self, load: GatewayLoad) -> bool:
        now, hot = self.clock(), self.overloaded(load)
        if self.state == "closed" and hot:
            self._open(now)
        elif self.state == "open" and now - self.opened_at >= settings.breaker_cooldown_s:
            self.state = "half-open"
        elif self.state == "half-open":
            if hot:
                self._open(now)
            else:
                self.state = "closed"
                log.info("circuit breaker closed: load is back under the thresholds")
        BREAKER.set(1 if self.state == "open" else 0)
        return self.state != "open"

    def _open(self, now: float) -> None:
        self.state, self.opened_at = "open", now
        log.warning("circuit breaker open: shedding low-priority room traffic for %.0f s", settings.breaker_cooldown_s)


def shape(messages: list[dict], allowed: float, admit_low: bool, rng: random.Random) -> tuple[list[dict], int, int]:
    """The messages one viewer gets from a batch: every high-priority one; ordinary ones, if
    low priority is admitted at all, sampled evenly to fill ``allowed``. Order is kept.
    Returns (chosen, sampled away, shed)."""
    high = [i for i, m in enumerate(messages) if m.get("priority", 0) >= Priority.HIGH]
    low = [i for i, m in enumerate(messages) if m.get("priority", 0) < Priority.HIGH]
    if not admit_low:
        return [messages[i] for i in high], 0, len(low)
    room = max(0, int(allowed) - len(high))
    kept = low if len(low) <= room else sorted(rng.sample(low, room))
    chosen = sorted(high + kept)
    return [messages[i] for i in chosen], len(low) - len(kept), 0


class Throttle:
    def __init__(self) -> None:
        self.connections: dict[str, TokenBucket] = {}
        self.breaker = Breaker()
        self.last_batch: dict[tuple[str, str], float] = {}
        self.carry: dict[tuple[str, str], float] = {}
        self.rng = random.Random()
        self.scripts: dict[str, Any] = {}  # the user bucket script, per gateway's Redis client
        self.posters: dict[str, TokenBucket] = {}  # room posts per user, on this gateway

    def _connection_bucket(self, origin: str) -> TokenBucket:
        if len(self.connections) > 100_000:  # forget idle connections' buckets now and then
            self.connections.clear()
        bucket = self.connections.get(origin)
        if bucket is None:
            bucket = self.connections[origin] = TokenBucket(settings.connection_rate, settings.connection_burst)
        return bucket

    async def before_send(self, command: SendCommand, gateway: GatewayContext | None) -> Rejection | None:
        wait = self._connection_bucket(command.origin).take() if command.origin else 0
        limit = "connection"
        if not wait and gateway is not None:
            bucket = self._user_bucket(gateway)
            wait = int(await bucket(keys=[f"im:throttle:{{{command.sender}}}"],
                                    args=[settings.user_rate, settings.user_burst, int(time.time() * 1000)]))
            limit = "user"
        if wait:
            REFUSED.labels(limit).inc()
            return Rejection("throttle.rate_limited", f"too many messages from this {limit}; retry in {wait} ms", wait)
        return None

    def _user_bucket(self, gateway: GatewayContext):
        script = self.scripts.get(gateway.node)
        if script is None or script.registered_client is not gateway.redis:
            script = self.scripts[gateway.node] = gateway.redis.register_script(USER_BUCKET)
        return script

    async def admit_broadcast(self, stream: str, key: str, user: str, priority: Priority,
                              gateway: GatewayContext) -> Rejection | None:
        # every post, gifts and the host's included: high priority is no licence to flood
        poster = self.posters.get(user)
        if poster is None:
            if len(self.posters) > 100_000:
                self.posters.clear()
            poster = self.posters[user] = TokenBucket(settings.post_rate, settings.post_burst)
        wait = poster.take()
        if wait:
            REFUSED.labels("poster").inc()
            return Rejection("throttle.rate_limited", f"too many posts from you; retry in {wait} ms", wait)
        if priority >= Priority.HIGH:
            return None
        redis, now = gateway.redis, time.time()
        counter = f"im:throttle:{stream}:{{{key}}}:{int(now)}"
        async with redis.pipeline(transaction=False) as pipe:
            pipe.incr(counter)
            pipe.expire(counter, 2)
            count, _ = await pipe.execute()
        if count > settings.room_inbound_rate:
            REFUSED.labels("room").inc()
            wait = max(1, int((1 - (now % 1)) * 1000))
            return Rejection("throttle.room_busy", f"room {key} is at its limit of posts; retry in {wait} ms", wait)
        return None

    def shape_broadcast(self, stream: str, key: str, messages: list[dict], load: GatewayLoad) -> list[dict]:
        now = time.monotonic()
        last = self.last_batch.get((stream, key), now - 0.1)
        self.last_batch[(stream, key)] = now
        # what the cap allows since the last batch, with the fraction carried over
        # (a room starts with a second's worth, like a full token bucket)
        allowed = self.carry.get((stream, key), settings.viewer_cap) + settings.viewer_cap * max(0.0, now - last)
        allowed = min(allowed, settings.viewer_cap)  # never more than a second's worth at once
        chosen, sampled, shed = shape(messages, allowed, self.breaker.admits_low(load), self.rng)
        self.carry[(stream, key)] = max(0.0, allowed - len(chosen))
        if sampled:
            SAMPLED.labels(stream).inc(sampled)
        if shed:
            SHED.labels(stream).inc(shed)
        return chosen


throttle = Throttle()


@hookimpl(tryfirst=True)  # firstresult: a plugin that rewrites the send must not skip the limits
async def imflow_before_send(command: SendCommand, gateway: GatewayContext | None) -> Rejection | None:
    return await throttle.before_send(command, gateway)


@hookimpl
def imflow_on_disconnect(connection: Outbound) -> None:
    throttle.connections.pop(connection.id, None)  # its bucket goes with it


@hookimpl
async def imflow_admit_broadcast(stream: str, key: str, user: str, priority: Priority, gateway: GatewayContext) -> Rejection | None:
    return await throttle.admit_broadcast(stream, key, user, priority, gateway)


@hookimpl
def imflow_shape_broadcast(stream: str, key: str, messages: list[dict], load: GatewayLoad) -> list[dict]:
    return throttle.shape_broadcast(stream, key, messages, load)
