"""Presence (docs/protocol.md, "Presence"): contacts watch each other come online and go offline,
with a last-seen time; a second device changes nothing; a hidden user looks offline; strangers
may not watch; a gateway killed with SIGKILL takes its users offline for their watchers within
the liveness TTL and a heartbeat.

The transitions and the sweep are tested on fakeredis and the real redis-server (core/storage),
the protocol on both stacks, the kill on a real stack of its own.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import orjson
import pytest

from imflow.client import Client, ClientError
from imflow.core import presence as presence_service
from imflow.core.storage import gateway_events, gateway_liveness, keys, presence, redis_client
from imflow.testing import eventually

BEAT_S, TTL_S = 0.5, 2.0  # the gateways of these stacks: a dead one is swept within ~3 s
WATCH_MAX = 5
STACK_EXTRA_ENV = {
    "IMFLOW_GATEWAY_HEARTBEAT_SECONDS": str(BEAT_S),
    "IMFLOW_GATEWAY_LIVENESS_TTL_SECONDS": str(TTL_S),
    "IMFLOW_PRESENCE_WATCH_MAX": str(WATCH_MAX),
}


async def connect(stack, user: str, gateway: int = 0) -> Client:
    client = await Client.connect(stack.url(gateway), stack.token(user))
    await client.ping()  # served only once the session's presence is recorded (and published)
    return client


async def befriend(one: Client, other: Client) -> None:
    """Make the two contacts through the protocol (a request and its acceptance)."""
    await one.request({"op": "contact_request", "user": other.user})
    accepted = await other.request({"op": "contact_accept", "user": one.user})
    assert accepted["event"] == "accepted", accepted


async def next_presence(client: Client, within_s: float = 10.0) -> list[dict]:
    """The users of the client's next ``presence`` push."""
    return (await client.next_message(timeout=within_s, op="presence"))["users"]


async def watch(client: Client, *users: str) -> list[dict]:
    reply = await client.request({"op": "watch_presence", "users": list(users)})
    assert reply["op"] == "presence", reply
    return reply["users"]


async def refused(client: Client, frame: dict, code: str) -> None:
    with pytest.raises(ClientError) as error:
        await client.request(frame)
    assert error.value.code == code, error.value.frame


# -- the storage rules, on fakeredis and the real redis-server


async def test_transitions_count_connections_over_all_gateways(any_redis) -> None:
    await any_redis.hset(keys.contacts("ann"), mapping={"bob": 1, "cid": 2})
    went = await presence.connected(any_redis, "ann", "gw-a")
    assert went is not None and went.online and not went.hidden and set(went.contacts) == {"bob", "cid"}
    assert went.last_seen_ms is None
    assert await presence.connected(any_redis, "ann", "gw-b") is None
    assert await presence.connected(any_redis, "ann", "gw-a") is None
    assert await presence.disconnected(any_redis, "ann", "gw-a", 111) is None
    assert await presence.disconnected(any_redis, "ann", "gw-b", 222) is None
    gone = await presence.disconnected(any_redis, "ann", "gw-a", 333)
    assert gone is not None and not gone.online and gone.last_seen_ms == 333
    assert await any_redis.hget(keys.account("ann"), "last_seen_ms") == b"333"
    assert await presence.disconnected(any_redis, "ann", "gw-a", 444) is None, "nothing left to close: no second offline"
    back = await presence.connected(any_redis, "ann", "gw-b")
    assert back is not None and back.online and back.last_seen_ms == 333


async def test_changes_written_together_count_as_one_at_a_time_would(any_redis) -> None:
    """``changed`` applies connects and disconnects in their order: the same answers and counts
    as the one-at-a-time calls, a user coming and going within one batch included."""
    await any_redis.sadd(keys.user_groups("ann"), "g1")
    steps = [("ann", True), ("bob", True), ("ann", True), ("ann", False), ("bob", False), ("cid", True), ("ann", False)]
    together = await presence.changed(any_redis, "gw-a", steps, 777)
    assert [(c.user, c.online) if c else None for c in together] == [
        ("ann", True), ("bob", True), None, None, ("bob", False), ("cid", True), ("ann", False)]
    assert await any_redis.hget(keys.gateway_users("gw-a"), "cid") == b"1"
    assert await any_redis.hget(keys.gateway_users("gw-a"), "ann") is None
    assert await any_redis.hget(keys.group_online("g1"), "gw-a|ann") is None


async def test_a_crowd_leaving_at_once_is_written_in_a_few_batches(any_redis, monkeypatch) -> None:
    """1,500 connections closing at once (a network blip, a gateway restart): the hub writes
    their presence in batches, not one round trip and lock turn each, and every count ends right."""
    from imflow.gateway.hub import PRESENCE_BATCH, Hub

    writes: list[int] = []
    real = presence_service.changed

    async def counted(redis, node, changes):
        writes.append(len(changes))
        await real(redis, node, changes)

    monkeypatch.setattr(presence_service, "changed", counted)
    hub = Hub(any_redis, "gw-crowd")
    users = [f"viewer{i}" for i in range(1500)]
    await asyncio.gather(*(hub.record_presence(user, True) for user in users))
    await asyncio.gather(*(hub.record_presence(user, False) for user in users))
    assert sum(writes) == 3000 and len(writes) <= 3000 // PRESENCE_BATCH + 4, writes
    assert await any_redis.hlen(keys.gateway_users("gw-crowd")) == 0
    states = await presence.states(any_redis, users[:3])
    assert not any(state.online for state in states)


async def test_a_sweep_takes_offline_only_those_left_without_a_connection(any_redis) -> None:
    for user in ("ann", "bob"):
        await presence.connected(any_redis, user, "gw-dead")
    await presence.connected(any_redis, "bob", "gw-live")
    swept = await gateway_liveness.sweep_entries(any_redis, "gw-dead", 555)
    assert swept.users == 2
    assert [(c.user, c.online, c.last_seen_ms) for c in swept.offline] == [("ann", False, 555)]
    # the gateway was only paused: its write-back brings ann online again (bob never left)
    back = await presence.announce(any_redis, "gw-dead", {"ann": 1, "bob": 1})
    assert [(c.user, c.online) for c in back] == [("ann", True)]


async def test_a_write_back_sets_counts_so_an_unrecorded_disconnect_is_repaired(any_redis) -> None:
    """A disconnect Redis did not take (the gateway's hub writes the user's count back at its
    next beat): setting the count to what the gateway holds, 0, takes every entry away and takes
    the user offline; doing it twice changes nothing more."""
    await any_redis.sadd(keys.user_groups("ann"), "g1")
    await presence.connected(any_redis, "ann", "gw-a")
    went = await presence.announce(any_redis, "gw-a", {"ann": 0})
    assert [(c.user, c.online) for c in went] == [("ann", False)]
    assert not await any_redis.hexists(keys.user_gateways("ann"), "gw-a")
    assert not await any_redis.hexists(keys.gateway_users("gw-a"), "ann")
    assert not await any_redis.hexists(keys.group_online("g1"), "gw-a|ann")
    assert await presence.announce(any_redis, "gw-a", {"ann": 0}) == []


async def test_states_respect_hidden_and_dead_gateways(any_redis) -> None:
    await gateway_liveness.beat(any_redis, "gw-a", 60)
    await presence.connected(any_redis, "ann", "gw-a")
    await presence.connected(any_redis, "bob", "gw-a")
    await any_redis.hset(keys.account("bob"), mapping={"presence": "hidden", "last_seen_ms": 5})
    await any_redis.hset(keys.account("cid"), "last_seen_ms", 7)
    states = await presence.states(any_redis, ["ann", "bob", "cid"])
    assert [s.to_dict() for s in states] == [
        {"user": "ann", "online": True, "last_seen_ms": None},
        {"user": "bob", "online": False, "last_seen_ms": None},
        {"user": "cid", "online": False, "last_seen_ms": 7},
    ]


async def test_changes_go_to_the_contacts_gateways_only_and_not_for_a_hidden_user(any_redis) -> None:
    await any_redis.hset(keys.contacts("ann"), mapping={"bob": 1, "cid": 1})
    await presence.connected(any_redis, "bob", "gw-b")  # cid is connected nowhere; eve is no contact
    await presence.connected(any_redis, "eve", "gw-e")
    # one subscription per gateway channel: on a cluster each is sharded, perhaps on another node
    pubsubs = [await redis_client.subscribe(any_redis, gateway_events.own_channel(node)) for node in ("gw-b", "gw-e")]
    try:
        await presence_service.changed(any_redis, "gw-a", [("ann", True)])
        await any_redis.hset(keys.account("ann"), "presence", "hidden")
        await presence_service.changed(any_redis, "gw-a", [("ann", True)])  # no change
        await presence_service.changed(any_redis, "gw-a", [("ann", False)])
        await presence_service.changed(any_redis, "gw-a", [("ann", False)])  # offline, but hidden: told nobody
        await any_redis.hdel(keys.account("ann"), "presence")
        await presence_service.visibility_changed(any_redis, "ann")
        heard = []

        async def both() -> bool:
            for pubsub in pubsubs:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
                if message is not None:
                    heard.append((message["channel"].decode(), message["data"]))
            return len(heard) >= 2

        await eventually(both, timeout=5, interval=0)
        events = [(channel, orjson.loads(data)) for channel, data in heard]
        assert [channel for channel, _ in events] == [gateway_events.own_channel("gw-b")] * 2
        (online,), (visible,) = (batch for _, batch in events)
        assert online["users"] == ["bob"] and online["push"]["users"][0]["online"] is True
        assert visible["push"]["users"][0]["online"] is False and visible["push"]["users"][0]["last_seen_ms"] > 0
        for pubsub in pubsubs:
            assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    finally:
        for pubsub in pubsubs:
            await pubsub.aclose()


# -- a gateway killed with SIGKILL, on a real stack of its own


@pytest.mark.kafka
@pytest.mark.redis
async def test_a_killed_gateways_users_go_offline_for_their_watchers(kafka_url, redis_url, tmp_path) -> None:
    from stacks import real_stack

    # no flush: the module's own real stack may be running on this database
    stack = await asyncio.to_thread(real_stack, tmp_path, kafka_url, redis_url, 2, STACK_EXTRA_ENV)
    try:
        suffix = uuid.uuid4().hex[:6]
        alice = await connect(stack, f"alice-{suffix}", gateway=0)
        bob = await connect(stack, f"bob-{suffix}", gateway=1)
        await befriend(alice, bob)
        assert (await watch(alice, bob.user))[0]["online"] is True
        loop = asyncio.get_running_loop()
        victim = stack.gateways.pop(1)  # killed on purpose: not to be stopped gracefully
        victim.proc.send_signal(signal.SIGKILL)
        killed_at = loop.time()
        await asyncio.to_thread(victim.terminate)  # reaps it and closes its log
        stack.ports.pop(1)
        (gone,) = await next_presence(alice, within_s=TTL_S + 2 * BEAT_S + 10)
        waited = loop.time() - killed_at
        assert gone["user"] == bob.user and gone["online"] is False and gone["last_seen_ms"] > 0
        # the TTL, then a beat of the survivor, then the sweep (which runs a beat after it has
        # beaten for a TTL itself: long since true)
        assert waited < TTL_S + 2 * BEAT_S + 2, f"offline {waited:.1f} s after the kill"
        await bob.close()
        await alice.close()
        stack.assert_alive()
    finally:
        await asyncio.to_thread(stack.stop)


# -- the protocol, on both stacks


async def test_a_contact_is_seen_coming_online_and_going_offline_with_a_last_seen_time(stack, users) -> None:
    async with await connect(stack, users.alice) as alice:
        async with await connect(stack, users.bob, gateway=1) as bob:
            await befriend(alice, bob)
            assert await watch(alice, users.bob) == [{"user": users.bob, "online": True, "last_seen_ms": None}]
            closed_ms = time.time() * 1000
        (gone,) = await next_presence(alice)
        assert gone["user"] == users.bob and gone["online"] is False
        assert closed_ms - 1000 <= gone["last_seen_ms"] <= time.time() * 1000 + 1000  # same machine, same clock
        async with await connect(stack, users.bob):
            assert await next_presence(alice) == [{"user": users.bob, "online": True, "last_seen_ms": gone["last_seen_ms"]}]
        (again,) = await next_presence(alice)
        assert again["online"] is False and again["last_seen_ms"] >= gone["last_seen_ms"]
        # a watch ends with its connection: a new one starts with the state now
        async with await connect(stack, users.alice, gateway=1) as other:
            assert await watch(other, users.bob) == [again]


async def test_a_second_device_does_not_flip_presence(stack, users) -> None:
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob) as phone:
        await befriend(alice, phone)
        await watch(alice, users.bob)
        laptop = await connect(stack, users.bob, gateway=1)
        await laptop.close()
        await phone.close()
        # one change for the two closes (the last one), and the laptop's coming changed nothing
        (first,) = await next_presence(alice)
        assert first["user"] == users.bob and first["online"] is False
        async with await connect(stack, users.bob, gateway=1):
            (second,) = await next_presence(alice)
            assert second["online"] is True, "the laptop's close told nobody: the next change is this connect"


async def test_only_contacts_may_be_watched_and_a_refusal_watches_nothing(stack, users) -> None:
    async with await connect(stack, users.alice) as alice, await connect(stack, users.carol) as carol:
        bob = await connect(stack, users.bob, gateway=1)
        await befriend(alice, bob)
        await befriend(bob, carol)  # carol is bob's contact, not alice's
        await refused(alice, {"op": "watch_presence", "users": [users.bob, users.carol]}, "forbidden")
        await refused(alice, {"op": "watch_presence", "users": [users.alice]}, "forbidden")  # not one's own contact
        await watch(carol, users.bob)
        await bob.close()
        # carol heard it: the publish to alice's gateway (the same batch) has happened too
        assert (await next_presence(carol))[0]["online"] is False
        assert (await watch(alice, users.bob))[0]["online"] is False
        async with await connect(stack, users.bob, gateway=1):
            (seen,) = await next_presence(alice)
            assert seen["user"] == users.bob and seen["online"] is True, "the refused watch did not hear bob leave"


async def test_unwatch_stops_the_pushes_and_a_watch_has_a_limit(stack, users) -> None:
    async with (
        await connect(stack, users.alice) as alice,
        await connect(stack, users.dave, gateway=1) as dave,
    ):
        bob, carol = await connect(stack, users.bob), await connect(stack, users.carol, gateway=1)
        for one, other in ((alice, bob), (alice, carol), (dave, bob)):
            await befriend(one, other)
        await watch(alice, users.bob, users.carol)
        await watch(dave, users.bob)
        reply = await alice.request({"op": "unwatch_presence", "users": [users.bob, users.bob, users.zed]})
        assert reply == {"op": "presence_unwatched", "users": [users.bob, users.zed], "ref": reply["ref"]}
        await bob.close()
        assert (await next_presence(dave))[0]["user"] == users.bob  # published to alice's gateway too
        await carol.close()
        (first,) = await next_presence(alice)
        assert first["user"] == users.carol and first["online"] is False, "bob is unwatched: nothing of him"
        many = [f"{users.x}{i}" for i in range(WATCH_MAX)]  # carol and five more: past the limit
        await refused(alice, {"op": "watch_presence", "users": many}, "forbidden")


async def test_a_hidden_user_looks_offline_and_switching_tells_the_watchers(stack, users) -> None:
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob) as bob:
        await befriend(alice, bob)
        await watch(alice, users.bob)
        await bob.request({"op": "set_privacy", "presence": "hidden"})
        assert await next_presence(alice) == [{"user": users.bob, "online": False, "last_seen_ms": None}]
        assert await watch(alice, users.bob) == [{"user": users.bob, "online": False, "last_seen_ms": None}]
        other = await connect(stack, users.bob, gateway=1)  # hidden: its coming and going tell nobody
        await other.close()
        await bob.request({"op": "set_privacy", "presence": "visible"})
        assert await next_presence(alice) == [{"user": users.bob, "online": True, "last_seen_ms": None}]


async def test_bad_presence_frames(stack, users) -> None:
    async with await connect(stack, users.alice) as alice:
        for frame in (
            {"op": "watch_presence", "users": []},
            {"op": "watch_presence", "users": users.bob},
            {"op": "watch_presence"},
            {"op": "watch_presence", "users": ["bad id!"]},
            {"op": "watch_presence", "users": [users.bob] * 1001},
            {"op": "unwatch_presence", "users": []},
            {"op": "watch_presence", "users": [users.bob], "extra": 1},
        ):
            await refused(alice, frame, "bad_frame")

