"""Limits per user hold across gateways: a user's connections spread over two gateways share one
token bucket per limit (sends, room posts), kept in Redis by one Lua script.

The buckets refill slowly here (one token every 5 s), so a burst of requests is admitted exactly
up to the burst however long the round trips take, and the bound does not depend on timing.
"""

from __future__ import annotations

import asyncio
import time

from imflow.client import Client, ClientError
from imflow.plugins.throttling import buckets
from imflow.plugins.throttling.buckets import Bucket

RATE, BURST = 0.2, 10  # tokens per second, tokens
STACK_EXTRA_ENV = {
    "IMFLOW_THROTTLE_USER_RATE": str(RATE),
    "IMFLOW_THROTTLE_USER_BURST": str(BURST),
    "IMFLOW_THROTTLE_POST_RATE": str(RATE),
    "IMFLOW_THROTTLE_POST_BURST": str(BURST),
}


# -- the bucket itself, with a clock the test moves


async def test_a_bucket_gives_its_burst_then_says_when_to_retry(any_redis) -> None:
    bucket = Bucket("user", "im:throttle:{u:carl}:test", rate=2, burst=3)
    now = 1_000_000
    assert [await buckets.take(any_redis, [bucket], now) for _ in range(3)] == [None] * 3
    refused = await buckets.take(any_redis, [bucket], now)
    assert refused is not None and refused.bucket == bucket
    assert 450 <= refused.retry_after_ms <= 500, "one token comes every 500 ms"
    now += refused.retry_after_ms
    assert await buckets.take(any_redis, [bucket], now) is None
    now += 100_000  # a long pause refills it to the burst, not beyond
    assert [await buckets.take(any_redis, [bucket], now) for _ in range(3)] == [None] * 3
    assert await buckets.take(any_redis, [bucket], now) is not None
    assert 0 < await any_redis.pttl(bucket.key) <= 2_500, "an idle bucket is forgotten once it would be full"


async def test_a_take_from_several_buckets_is_all_or_nothing(any_redis) -> None:
    connection = Bucket("connection", "im:throttle:{u:dora}:connection:c1", rate=1, burst=1)
    user = Bucket("user", "im:throttle:{u:dora}:send", rate=1, burst=3)
    now = 5_000_000
    assert await buckets.take(any_redis, [connection, user], now) is None
    for _ in range(3):  # the connection's bucket is dry: each refusal leaves the user's alone
        refused = await buckets.take(any_redis, [connection, user], now)
        assert refused is not None and refused.bucket == connection and refused.retry_after_ms == 1000
    other = Bucket("connection", "im:throttle:{u:dora}:connection:c2", rate=1, burst=1)
    assert await buckets.take(any_redis, [other, user], now) is None
    assert await buckets.take(any_redis, [user], now) is None, "two of the user's three tokens were taken, not five"
    refused = await buckets.take(any_redis, [user], now)
    assert refused is not None and refused.bucket == user


async def test_the_redis_servers_clock_is_used_when_none_is_given(any_redis) -> None:
    bucket = Bucket("poster", "im:throttle:{u:erin}:post", rate=0.5, burst=2)
    assert [await buckets.take(any_redis, [bucket]) for _ in range(2)] == [None, None]
    refused = await buckets.take(any_redis, [bucket])
    assert refused is not None and 0 < refused.retry_after_ms <= 2000


# -- through the gateways of both stacks


async def _burst(attempts: list) -> tuple[int, list[dict], float]:
    """Run the attempts at once: (how many were admitted, the refusals' error frames, seconds)."""
    started = time.monotonic()
    outcomes = await asyncio.gather(*attempts, return_exceptions=True)
    elapsed = time.monotonic() - started
    refused = [o.frame for o in outcomes if isinstance(o, ClientError)]
    assert all(not isinstance(o, BaseException) or isinstance(o, ClientError) for o in outcomes), outcomes
    return len(outcomes) - len(refused), refused, elapsed


async def test_every_per_user_limit_holds_across_gateways(stack, users) -> None:
    """alice has three connections on two gateways (two on the first, one on the second); 20 room
    posts and 20 sends spread over them get through only up to the burst of each limit, and
    another user's limits are untouched."""
    alice = [await Client.connect(stack.url(gateway), stack.token(users.alice)) for gateway in (0, 1, 0)]
    room = f"stage-{users.alice}"
    try:
        for connection in alice:
            await connection.request({"op": "room.join", "room": room})
        limits = {
            "room posts": lambda i: alice[i % 3].request({"op": "room.post", "room": room, "text": f"post {i}"}),
            "sends": lambda i: alice[i % 3].send_text(users.bob, f"send {i}", timeout=30),
        }
        for limit, attempt in limits.items():
            admitted, refused, elapsed = await _burst([attempt(i) for i in range(20)])
            assert BURST <= admitted <= BURST + RATE * elapsed, f"{limit}: {admitted} admitted in {elapsed:.2f} s"
            assert {frame["code"] for frame in refused} == {"throttle.rate_limited"}, limit
            assert all(0 < frame["retry_after_ms"] <= 1000 / RATE for frame in refused), limit
        # the buckets are alice's alone: bob, on the second gateway, has his whole burst
        async with await Client.connect(stack.url(1), stack.token(users.bob)) as bob:
            await bob.request({"op": "room.join", "room": room})
            admitted, _, _ = await _burst([bob.request({"op": "room.post", "room": room, "text": "yo"}) for _ in range(BURST)])
            assert admitted == BURST
    finally:
        for connection in alice:
            await connection.close()
