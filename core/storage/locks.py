"""Short-lived Redis locks for work that one process at a time should do (flushes, sealing).

Built on redis-py's ``Lock`` (a token per holder; release deletes the key only while the token
is still ours, so a holder whose lock expired never frees someone else's). A lock that is not
free is not waited for: the caller skips the work, another process is doing it. The TTL bounds
how long a crashed holder keeps others out.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from redis.exceptions import LockError, RedisError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

log = logging.getLogger(__name__)


@asynccontextmanager
async def try_hold(redis: Redis, key: str, ttl_ms: int) -> AsyncIterator[bool]:
    """Take the lock ``key`` for at most ``ttl_ms`` ms if it is free; yields whether we hold it.

    The lock is released on leaving the block (if it is still ours). Raises redis errors from
    taking it; an error while releasing is logged (the TTL frees the lock anyway).
    """
    lock = redis.lock(key, timeout=ttl_ms / 1000, blocking=False)
    held = await lock.acquire()
    try:
        yield bool(held)
    finally:
        if held:
            try:
                await lock.release()
            except LockError:  # expired and perhaps taken by another: not ours to free
                log.warning("lock %s expired before it was released (work outlasted %d ms)", key, ttl_ms)
            except RedisError as exc:  # Redis away now: the TTL frees it; the work's own outcome stands
                log.warning("lock %s not released (%s); it expires within %d ms", key, exc, ttl_ms)
