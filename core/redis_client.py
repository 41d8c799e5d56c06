"""Redis clients: the real server from a URL, or fakeredis (with Lua) for the embedded default."""

from __future__ import annotations

from redis.asyncio import Redis


def connect(url: str | None) -> Redis:
    """A client for ``url``; without one, an in-process fakeredis server private to this client."""
    if url:
        return Redis.from_url(url, decode_responses=False, health_check_interval=30)
    import fakeredis  # only the embedded default needs it

    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=False)
