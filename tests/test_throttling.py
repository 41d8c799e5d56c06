"""The throttling plugin: token buckets, the room inbound cap, the per-viewer cap that keeps
priority messages, and the circuit breaker — as functions and through an embedded imflow."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from imflow.client import ClientError
from imflow.plugin_api import GatewayLoad, Priority
from imflow.plugins.throttling import Breaker, ThrottleSettings, shape

CALM = GatewayLoad(connections=100, queued_frames=10, slow_connections=0, loop_lag_ms=2)
HOT = GatewayLoad(connections=100, queued_frames=100_000, slow_connections=40, loop_lag_ms=900)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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
    settings = ThrottleSettings()
    breaker = Breaker(settings, clock)
    assert breaker.admits_low(CALM) and breaker.state == "closed"
    assert not breaker.admits_low(HOT) and breaker.state == "open"
    clock.now += 1
    assert not breaker.admits_low(CALM), "stays open through the cool-down"
    clock.now += settings.breaker_cooldown_s
    assert breaker.admits_low(HOT) and breaker.state == "half-open", "tries again after the cool-down"
    assert not breaker.admits_low(HOT) and breaker.state == "open", "still hot: open again"
    clock.now += settings.breaker_cooldown_s
    breaker.admits_low(CALM)
    assert breaker.admits_low(CALM) and breaker.state == "closed"


async def room_texts_through(viewer, last: str, timeout: float = 30) -> list[str]:
    """The texts of the room messages a viewer gets, up to the batch that holds ``last`` (the
    last one posted) and the rest of that batch, however long the batches take to come."""
    got: list[str] = []
    async with asyncio.timeout(timeout):
        while last not in got:
            frame = await viewer.next_message(timeout=timeout, op="room.batch")
            got.extend(m["text"] for m in frame["messages"])
        # a batch goes out as a high- and a low-priority frame together, ahead of this pong
        await viewer.ping()
    while not viewer.pushes.empty():
        frame = viewer.pushes.get_nowait()
        if frame.get("op") == "room.batch":
            got.extend(m["text"] for m in frame["messages"])
    return got


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch):
    """Set throttling settings through the environment, before the server (and its plugin
    object, which reads them when it is built) starts."""

    def set_(**values: float) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"IMFLOW_THROTTLE_{name.upper()}", str(value))

    return set_


async def _outcome(call) -> str | dict:
    """'sent' if the call (a send or any request) succeeded, else the error frame that refused it."""
    try:
        await call
    except ClientError as error:
        return error.frame
    return "sent"


async def test_sends_beyond_the_connection_limit_are_refused_with_a_retry_hint(imflow_server, limits) -> None:
    limits(connection_rate=1, connection_burst=3)  # a token a second
    async with imflow_server() as server, await server.client("alice") as alice, await server.client("bob") as bob:
        # the five sends go out at once, not each after the last one's ACK: however slow the
        # machine, they reach the gateway far quicker than the second a token takes to come
        outcomes = await asyncio.gather(*(_outcome(alice.send_text("bob", f"m{i}")) for i in range(5)))
        refusals = [outcome for outcome in outcomes if outcome != "sent"]
        assert outcomes.count("sent") == 3 and len(refusals) == 2, outcomes
        for refused in refusals:
            assert refused["code"] == "throttle.rate_limited" and 0 < refused["retry_after_ms"] <= 1000, refused
        # each hint counts from its refusal, which came before now: the longest one is enough
        await asyncio.sleep(max(refused["retry_after_ms"] for refused in refusals) / 1000 + 0.05)
        assert (await alice.send_text("bob", "after waiting"))["seq"] == 4
        assert (await bob.send_text("alice", "bob has his own bucket"))["seq"] == 5


async def test_room_posts_are_limited_per_user_whatever_their_priority(imflow_server, limits) -> None:
    # a token every 100 s: the three posts of the burst are all there is, however slow the machine
    limits(post_rate=0.01, post_burst=3)
    async with imflow_server() as server, await server.client("gifter") as gifter:
        await gifter.request({"op": "room.join", "room": "fair"})
        for i in range(3):
            await gifter.request({"op": "room.post", "room": "fair", "text": f"gift {i}", "kind": "gift"})
        with pytest.raises(ClientError) as refused:
            await gifter.request({"op": "room.post", "room": "fair", "text": "one more", "kind": "gift"})
        assert refused.value.code == "throttle.rate_limited" and refused.value.frame["retry_after_ms"] > 0


async def test_the_user_limit_holds_across_connections(imflow_server, limits) -> None:
    limits(user_rate=0.01, user_burst=2)  # no token comes back while the test runs, however slow
    async with imflow_server() as server, await server.client("carl") as phone, await server.client("carl") as laptop:
        await phone.send_text("dora", "one")
        await laptop.send_text("dora", "two")
        with pytest.raises(ClientError) as refused:
            await phone.send_text("dora", "three")
        assert refused.value.code == "throttle.rate_limited" and "user" in refused.value.frame["message"]


async def test_room_caps_keep_gifts_and_the_host_and_count_what_they_leave_out(imflow_server, limits) -> None:
    limits(room_inbound_rate=5, viewer_cap=4, post_rate=100, post_burst=100)
    async with imflow_server() as server:
        clients = []
        try:
            for name in ("host", "fan", "viewer"):
                clients.append(await server.client(name))
            host, fan, viewer = clients
            await host.request({"op": "room.open", "room": "gala"})
            for client in (host, fan, viewer):
                await client.request({"op": "room.join", "room": "gala"})
            # ordinary posts beyond 5 a second are refused: 20 at once (not each after the last
            # one's reply) reach the gateway within a few ms, however slow the machine
            posted = await asyncio.gather(*(_outcome(fan.request({"op": "room.post", "room": "gala", "text": f"chat {i}"}))
                                            for i in range(20)))
            busy = next((outcome for outcome in posted if outcome != "sent"), None)
            assert busy is not None and busy["code"] == "throttle.room_busy" and busy["retry_after_ms"] > 0
            for i in range(12):  # the host and gifts are never refused
                await host.request({"op": "room.post", "room": "gala", "text": f"host {i}"})
            await fan.request({"op": "room.post", "room": "gala", "text": "🎁", "kind": "gift"})
            got = await room_texts_through(viewer, "🎁")
            assert [t for t in got if t.startswith("host")] == [f"host {i}" for i in range(12)], "every host message"
            assert "🎁" in got
            assert len([t for t in got if t.startswith("chat")]) < 5, "chat was sampled to the viewer cap"
        finally:
            for client in clients:
                await client.close()
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{server.http}/metrics")).text
        sampled = [line for line in metrics.splitlines() if line.startswith('imflow_throttle_sampled_total{stream="rooms"}')]
        assert sampled and float(sampled[0].split()[-1]) >= 1
        assert "imflow_throttle_breaker_open" in metrics and "imflow_gateway_loop_lag_ms" in metrics
