"""Throttling and circuit breaking (R14), as a plugin.

- **Send limits**: token buckets per user (over all the user's connections on all gateways) and
  per connection. A refused send gets ``throttle.rate_limited`` with ``retry_after_ms``.
- **Room post limit**: room posts per user, over all gateways, whatever their priority
  (``throttle.rate_limited``).
- **Room inbound cap**: ordinary posts into one room, per second, over all gateways
  (``throttle.room_busy`` with ``retry_after_ms``); high-priority posts are never refused.
- **Per-viewer delivered cap**: at most ``IMFLOW_THROTTLE_VIEWER_CAP`` room messages per
  second reach a viewer; high-priority ones (gifts, red packets, the host) always, ordinary
  chat sampled evenly to fill the rest. One decision per room and batch on a gateway, so it
  costs nothing per viewer.
- **Circuit breaker**: when the gateway's event loop lags or its outbound queues fill past a
  threshold, it opens and sheds all low-priority room traffic; after a cool-down it lets it
  through again (half-open) and closes once the load stays below the thresholds.

The send, post and room limits are token buckets in Redis (``buckets.py``, one Lua script for
all of them), so a limit per user holds however the user's connections are spread over gateways.
The per-viewer cap and the breaker stay on each gateway: they judge that gateway's own viewers
and load.

Counts of sampled and shed messages and the breaker's state are Prometheus metrics (/metrics).
Each plugin manager builds its own ``Throttling`` object: its settings (``IMFLOW_THROTTLE_…``,
read then), breaker and per-viewer carry are its own.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imflow.plugin_api import GatewayContext, GatewayLoad, Priority, Rejection, SendCommand, hookimpl, user_tag

from .buckets import Bucket, take

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)


class ThrottleSettings(BaseSettings):
    """The plugin's settings (``IMFLOW_THROTTLE_…``), shown by ``imflow config``."""

    model_config = SettingsConfigDict(env_prefix="IMFLOW_THROTTLE_", env_file=".env", extra="ignore")
    user_rate: float = Field(20.0, gt=0, description="Sends per second per user, all connections on all gateways")
    user_burst: int = Field(40, ge=1, description="Sends a user may make at once before the user rate applies")
    connection_rate: float = Field(10.0, gt=0, description="Sends per second per connection")
    connection_burst: int = Field(20, ge=1, description="Sends a connection may make at once before its rate applies")
    room_inbound_rate: int = Field(2_000, ge=1, description="Ordinary posts per second into one room, over all gateways")
    post_rate: float = Field(5.0, gt=0, description="Room posts per second per user over all gateways, any priority")
    post_burst: int = Field(10, ge=1, description="Room posts a user may make at once before the post rate applies")
    viewer_cap: float = Field(40.0, description="Room messages per second one viewer receives")
    breaker_lag_ms: float = Field(250.0, description="Event-loop lag (ms) past which the circuit breaker opens")
    breaker_queued_per_connection: float = Field(200.0, description="Queued frames per connection past which the breaker opens")
    breaker_cooldown_s: float = Field(5.0, description="How long the open breaker sheds low-priority traffic before trying again")

SAMPLED = Counter("imflow_throttle_sampled", "Room messages left out by the per-viewer cap (per batch)", ["stream"])
SHED = Counter("imflow_throttle_shed", "Room messages shed by the open circuit breaker (per batch)", ["stream"])
REFUSED = Counter("imflow_throttle_refused", "Sends and posts refused by a rate limit", ["limit"])
BREAKER = Gauge("imflow_throttle_breaker_open", "1 while the circuit breaker sheds low-priority traffic")


def send_buckets(user: str, connection: str, settings: ThrottleSettings) -> list[Bucket]:
    """The buckets a send takes from: its connection's (if it came on one) and its user's, under
    the user's hash tag so that one call takes from both."""
    tag = user_tag(user)
    user_bucket = Bucket("user", f"im:throttle:{tag}:send", settings.user_rate, settings.user_burst)
    if not connection:
        return [user_bucket]
    key = f"im:throttle:{tag}:connection:{connection}"
    return [Bucket("connection", key, settings.connection_rate, settings.connection_burst), user_bucket]


def poster_bucket(user: str, settings: ThrottleSettings) -> Bucket:
    """Room posts of one user, whatever room, priority or gateway."""
    return Bucket("poster", f"im:throttle:{user_tag(user)}:post", settings.post_rate, settings.post_burst)


def room_bucket(stream: str, key: str, settings: ThrottleSettings) -> Bucket:
    """Ordinary posts into one room (a second's worth of burst)."""
    return Bucket("room", f"im:throttle:{stream}:{{{key}}}:inbound", settings.room_inbound_rate, settings.room_inbound_rate)


class Breaker:
    """Closed → open when the load passes a threshold; open → half-open after the cool-down;
    half-open → closed if the load stays below, open again if not."""

    def __init__(self, settings: ThrottleSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.state = "closed"
        self.opened_at = 0.0

    def overloaded(self, load: GatewayLoad) -> bool:
        per_connection = load.queued_frames / max(1, load.connections)
        settings = self.settings
        return load.loop_lag_ms > settings.breaker_lag_ms or per_connection > settings.breaker_queued_per_connection

    def admits_low(self, load: GatewayLoad) -> bool:
        now, hot = self.clock(), self.overloaded(load)
        if self.state == "closed" and hot:
            self._open(now)
        elif self.state == "open" and now - self.opened_at >= self.settings.breaker_cooldown_s:
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
        log.warning("circuit breaker open: shedding low-priority room traffic for %.0f s", self.settings.breaker_cooldown_s)


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


class Throttling:
    """The plugin object, one per plugin manager. The gateway-local part is here: the breaker and
    the per-viewer cap (one decision per room and batch on this gateway, which is where its viewers
    are). Every limit on what users send is in Redis. ``settings`` default to the environment's."""

    def __init__(self, settings: ThrottleSettings | None = None) -> None:
        self.settings = settings or ThrottleSettings()
        self.breaker = Breaker(self.settings)
        self.last_batch: dict[tuple[str, str], float] = {}
        self.carry: dict[tuple[str, str], float] = {}
        self.rng = random.Random()

    @hookimpl
    def imflow_settings(self) -> ThrottleSettings:
        return self.settings

    @hookimpl(tryfirst=True)  # firstresult: a plugin that rewrites the send must not skip the limits
    async def imflow_before_send(self, command: SendCommand, gateway: GatewayContext | None) -> Rejection | None:
        """A ``throttle.rate_limited`` refusal when the sending connection or user is over its
        limit (no token taken from either then), else None."""
        if gateway is None:  # called outside a gateway: no Redis to count in, no client to limit
            return None
        refused = await take(gateway.redis, send_buckets(command.sender, command.origin, self.settings))
        if refused is None:
            return None
        limit, wait = refused.bucket.name, refused.retry_after_ms
        REFUSED.labels(limit).inc()
        return Rejection("throttle.rate_limited", f"too many messages from this {limit}; retry in {wait} ms", wait)

    @hookimpl
    async def imflow_admit_broadcast(self, stream: str, key: str, user: str, priority: Priority,
                                     gateway: GatewayContext) -> Rejection | None:
        """A refusal when ``user`` posts beyond their limit (``throttle.rate_limited``) or an
        ordinary post finds the room full (``throttle.room_busy``), else None."""
        # every post, gifts and the host's included: high priority is no licence to flood
        refused = await take(gateway.redis, [poster_bucket(user, self.settings)])
        if refused is not None:
            REFUSED.labels("poster").inc()
            wait = refused.retry_after_ms
            return Rejection("throttle.rate_limited", f"too many posts from you; retry in {wait} ms", wait)
        if priority >= Priority.HIGH:
            return None
        # another hash tag (the room's), so a call of its own; the user's post token stays spent
        refused = await take(gateway.redis, [room_bucket(stream, key, self.settings)])
        if refused is not None:
            REFUSED.labels("room").inc()
            wait = refused.retry_after_ms
            return Rejection("throttle.room_busy", f"room {key} is at its limit of posts; retry in {wait} ms", wait)
        return None

    @hookimpl
    def imflow_shape_broadcast(self, stream: str, key: str, messages: list[dict], load: GatewayLoad) -> list[dict]:
        """The messages of a batch every viewer of ``key`` here gets: the per-viewer cap and the breaker."""
        settings = self.settings
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

