"""Redis clients: the real server from a URL, or fakeredis (with Lua) for the embedded default."""

from __future__ import annotations

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis

# Redis is away or cannot take writes for now (down, loading its AOF, a failover, a cluster
# reshuffle, out of memory): wait and try again; never a verdict on the request itself.
STORAGE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # BusyLoadingError (the AOF is loading) is one
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
    redis_errors.OutOfMemoryError,
)


def text(value: bytes | str) -> str:
    """A reply as text: our clients answer bytes (``decode_responses=False``, so message JSON
    passes through untouched); redis-py's types also allow str."""
    return value.decode() if isinstance(value, bytes) else value


def connect(url: str | None, max_connections: int = 64) -> Redis:
    """A client for ``url``; without one, an in-process fakeredis server private to this client.

    The pool blocks (up to 10 s) when all its connections are busy instead of failing, so a
    burst of a thousand requests queues for a connection rather than erroring.
    """
    if url:
        pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=10, health_check_interval=30)
        return Redis.from_pool(pool)  # the client owns the pool: aclose() closes its connections too
    import fakeredis  # only the embedded default needs it

    return fakeredis.FakeAsyncRedis(
        server=fakeredis.FakeServer(),
        decode_responses=False,
        connection_pool_class=BlockingConnectionPool,
        max_connections=max_connections,
    )
