"""The throttling plugin: token buckets, the room inbound cap, the per-viewer cap that keeps
priority messages, and the circuit breaker — as functions and through an embedded imflow."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from imflow.client import ClientError
from imflow.core.plugin_types import GatewayLoad, Priority
from imflow.plugins import throttling
from imflow.plugins.throttling import Breaker, TokenBucket, shape

CALM = GatewayLoad(connections=100, queued_frames=10, slow_connections=0, loop_lag_ms=2)
HOT = GatewayLoad(connections=100, queued_frames=100_000, slow_connections=40, loop_lag_ms=900)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_allows_its_burst_then_says_when_to_retry() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    wait = bucket.take()
    assert 400 <= wait <= 500, "one token comes every 500 ms"
    clock.now += wait / 1000
    assert bucket.take() == 0
    clock.now += 100  # a long pause refills it to the burst, not beyond
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() > 0


def test_the_cap_keeps_every_priority_message_and_samples_chat_in_order() -> None:
    messages = [{"id": i, "priority": int(Priority.HIGH if i % 10 == 0 else Priority.LOW)} for i in range(100)]
    chosen, sampled, shed = shape(messages, allowed=25, admit_low=True, rng=random.Random(1))
    ids = [m["id"] for m in chosen]
    assert ids == sorted(ids), "order kept"
    assert {i for i in range(0, 100, 10)} <= set(ids), "every high-priority message"
    assert len(chosen) == 25 and sampled == 75 and shed == 0
    everything, sampled, _ = shape(messages[:20], allowed=40, admit_low=True, rng=random.Random(1))
    assert len(everything) == 20 and sampled == 0, "under the cap nothing is left out"
    flooded, sampled, _ = shape(messages, allowed=3, admit_low=True, rng=random.Random(1))
    assert [m["id"] for m in flooded] == list(range(0, 100, 10)), "over the cap, still every priority message"
    only_high, _, shed = shape(messages, allowed=50, admit_low=False, rng=random.Random(1))
    assert [m["id"] for m in only_high] == list(range(0, 100, 10)) and shed == 90


def test_the_breaker_opens_under_load_and_closes_by_itself() -> None:
    clock = Clock()
    breaker = Breaker(clock)
    assert breaker.admits_low(CALM) and breaker.state == "closed"
    assert not breaker.admits_low(HOT) and breaker.state == "open"
    clock.now += 1
    assert not breaker.admits_low(CALM), "stays open through the cool-down"
    clock.now += throttling.settings.breaker_cooldown_s
    assert breaker.admits_low(HOT) and breaker.state == "half-open", "tries again after the cool-down"
    assert not breaker.admits_low(HOT) and breaker.state == "open", "still hot: open again"
    clock.now += throttling.settings.breaker_cooldown_s
    breaker.admits_low(CALM)
    assert breaker.admits_low(CALM) and breaker.state == "closed"


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch):
    def set_(**values: float) -> None:
        for name, value in values.items():
            monkeypatch.setattr(throttling.settings, name, value)

    monkeypatch.setattr(throttling, "throttle", throttling.Throttle())  # fresh buckets and breaker
    return set_


async def test_sends_beyond_the_connection_limit_are_refused_with_a_retry_hint(imflow_server, limits) -> None:
    limits(connection_rate=1, connection_burst=3)  # a token a second: three sends never take that long
    async with imflow_server() as server, await server.client("alice") as alice, await server.client("bob") as bob:
        outcomes = []
        for i in range(5):
            try:
                await alice.send_text("bob", f"m{i}")
                outcomes.append("sent")
            except ClientError as error:
                outcomes.append(error.frame)
        assert outcomes[:3] == ["sent"] * 3
        refused = outcomes[3]
        assert refused["code"] == "throttle.rate_limited" and 0 < refused["retry_after_ms"] <= 1000
        await asyncio.sleep(refused["retry_after_ms"] / 1000 + 0.05)
        assert (await alice.send_text("bob", "after waiting"))["seq"] == 4
        assert (await bob.send_text("alice", "bob has his own bucket"))["seq"] == 5


async def test_room_posts_are_limited_per_user_whatever_their_priority(imflow_server, limits) -> None:
    limits(post_rate=1, post_burst=3)
    async with imflow_server() as server, await server.client("gifter") as gifter:
        await gifter.request({"op": "room.join", "room": "fair"})
        for i in range(3):
            await gifter.request({"op": "room.post", "room": "fair", "text": f"gift {i}", "kind": "gift"})
        with pytest.raises(ClientError) as refused:
            await gifter.request({"op": "room.post", "room": "fair", "text": "one more", "kind": "gift"})
        assert refused.value.code == "throttle.rate_limited" and refused.value.frame["retry_after_ms"] > 0


async def test_the_user_limit_holds_across_connections(imflow_server, limits) -> None:
    limits(user_rate=1, user_burst=2)
    async with imflow_server() as server, await server.client("carl") as phone, await server.client("carl") as laptop:
        await phone.send_text("dora", "one")
        await laptop.send_text("dora", "two")
        with pytest.raises(ClientError) as refused:
            await phone.send_text("dora", "three")
        assert refused.value.code == "throttle.rate_limited" and "user" in refused.value.frame["message"]


async def test_room_caps_keep_gifts_and_the_host_and_count_what_they_leave_out(imflow_server, limits) -> None:
    limits(room_inbound_rate=5, viewer_cap=4, post_rate=100, post_burst=100)
    async with imflow_server() as server:
        host, fan, viewer = await server.client("host"), await server.client("fan"), await server.client("viewer")
        try:
            await host.request({"op": "room.open", "room": "gala"})
            for client in (host, fan, viewer):
                await client.request({"op": "room.join", "room": "gala"})
            busy = None
            for i in range(20):  # ordinary posts beyond 5 a second are refused (20 take a few ms)
                try:
                    await fan.request({"op": "room.post", "room": "gala", "text": f"chat {i}"})
                except ClientError as error:
                    busy = error.frame
                    break
            assert busy is not None and busy["code"] == "throttle.room_busy" and busy["retry_after_ms"] > 0
            for i in range(12):  # the host and gifts are never refused
                await host.request({"op": "room.post", "room": "gala", "text": f"host {i}"})
            await fan.request({"op": "room.post", "room": "gala", "text": "🎁", "kind": "gift"})
            got = []
            while True:
                try:
                    frame = await viewer.next_message(timeout=1.0, op="room.batch")
                except asyncio.TimeoutError:
                    break
                got.extend(m["text"] for m in frame["messages"])
            assert [t for t in got if t.startswith("host")] == [f"host {i}" for i in range(12)], "every host message"
            assert "🎁" in got
            assert len([t for t in got if t.startswith("chat")]) < 5, "chat was sampled to the viewer cap"
        finally:
            for client in (host, fan, viewer):
                await client.close()
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{server.http}/metrics")).text
        sampled = [line for line in metrics.splitlines() if line.startswith('imflow_throttle_sampled_total{stream="rooms"}')]
        assert sampled and float(sampled[0].split()[-1]) >= 1
        assert "imflow_throttle_breaker_open" in metrics and "imflow_gateway_loop_lag_ms" in metrics
