"""Typing notices (the ``typing`` plugin): relayed to the other members connected now, on every
gateway, never to the typer's own devices, never stored; throttled per user and conversation in
Redis (so across gateways); dropped first by a connection that is behind; refused to non-members
and for bad fields, changing nothing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import fakeredis
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from stacks import connect, refused
from test_outbound_queue import LIMIT, direct_connection

from imflow.core.ephemeral import push_to_online_members
from imflow.core.errors import ImflowError
from imflow.core.models import ConversationId, direct_conversation, direct_members
from imflow.core.plugin_types import OperationContext, Priority
from imflow.core.settings import Settings
from imflow.gateway.hub import Hub
from imflow.plugin_api import script
from imflow.plugins import typing as typing_plugin
from imflow.testing import eventually

if TYPE_CHECKING:
    from imflow.client import Client



async def typing_start(client: Client, conversation: str, state: str = "start") -> dict:
    return await client.request({"op": f"typing.{state}", "conversation": conversation})


async def next_typing(client: Client) -> dict:
    """The next ``typing`` push (generous bound: the spec's second is for a loaded server)."""
    return await client.next_message(timeout=10, op="typing")


async def relayed_now(client: Client, conversation: str, state: str = "start") -> dict:
    """A notice that is relayed: waits out the throttle of an earlier one (relayed: false)."""
    async def attempt() -> dict | None:
        reply = await typing_start(client, conversation, state)
        return reply if reply["relayed"] else None

    return await eventually(attempt, timeout=10, interval=0.1)


async def test_a_notice_reaches_the_others_online_on_every_gateway_but_not_the_typer(stack, users) -> None:
    alice = await connect(stack, users.alice, 0)
    alice_phone = await connect(stack, users.alice, 1)  # the typer's other device, on the other gateway
    bob = await connect(stack, users.bob, 1)
    carol = await connect(stack, users.carol, 0)
    try:
        group = await alice.request({"op": "create_group", "name": "t", "members": [users.bob, users.carol, users.dave]})
        conversation = group["conversation"]
        reply = await typing_start(alice, conversation)
        # a second start at once (before waiting for anything, or a slow machine lets the
        # interval pass), from the other gateway: the limit is per user, in Redis
        again = await typing_start(alice_phone, conversation)
        assert reply == {"op": "typing.start", "conversation": conversation, "relayed": True, "ref": reply["ref"]}
        assert again["relayed"] is False and 1 <= again["retry_after_ms"] <= 1000
        for other in (bob, carol):
            notice = await next_typing(other)
            assert notice == {"op": "typing", "conversation": conversation, "user": users.alice, "state": "start"}
        # a stop is counted apart: it goes at once
        stop = await typing_start(alice, conversation, "stop")
        assert stop["relayed"] is True
        for other in (bob, carol):
            assert (await next_typing(other))["state"] == "stop"

        # bob types: the first notice alice's phone gets is bob's, none of alice's own came before it
        # (one pub/sub channel per gateway keeps the order of publishes)
        await typing_start(bob, conversation)
        assert (await next_typing(alice_phone))["user"] == users.bob
        assert (await next_typing(alice))["user"] == users.bob

        # never stored: no message in the conversation, nothing in bob's inbox
        assert (await bob.history(conversation))["messages"] == []
        assert (await bob.sync())["messages"] == []

        # one-to-one conversations too
        direct = direct_conversation(users.alice, users.bob)
        await relayed_now(alice, direct)
        assert await next_typing(bob) == {"op": "typing", "conversation": direct, "user": users.alice, "state": "start"}
    finally:
        for client in (alice, alice_phone, bob, carol):
            await client.close()


async def test_read_fan_out_groups_reach_the_members_online_through_the_online_index(stack, users) -> None:
    from stacks import READ_FAN_OUT_THRESHOLD

    names = [getattr(users, f"m{i}") for i in range(READ_FAN_OUT_THRESHOLD + 3)]  # most of them offline
    host = await connect(stack, users.host, 0)
    online = [await connect(stack, name, i) for i, name in enumerate(names[:3])]
    try:
        group = await host.request({"op": "create_group", "name": "big", "members": names})
        conversation = group["conversation"]
        await relayed_now(host, conversation)
        for client in online:
            assert (await next_typing(client))["user"] == users.host
        # one who left gets nothing more: the next notice another member gets is the first after it
        await online[0].request({"op": "leave_group", "gid": group["gid"]})
        await relayed_now(online[1], conversation)
        assert (await next_typing(online[2]))["user"] == names[1]
        await relayed_now(host, conversation, "stop")
        assert (await next_typing(online[2]))["user"] == users.host
        # the first notice the one who left gets is one from their direct conversation, sent after those
        direct = direct_conversation(users.host, names[0])
        await relayed_now(host, direct)
        assert (await next_typing(online[0]))["conversation"] == direct
    finally:
        for client in [host, *online]:
            await client.close()


async def test_non_members_and_bad_fields_are_refused_and_relay_nothing(stack, users) -> None:
    alice = await connect(stack, users.alice)
    bob = await connect(stack, users.bob)
    mallory = await connect(stack, users.mallory)
    try:
        group = await alice.request({"op": "create_group", "name": "t", "members": [users.bob]})
        conversation = group["conversation"]
        for elsewhere in (conversation, direct_conversation(users.alice, users.bob), "g:no-such-group"):
            await refused(typing_start(mallory, elsewhere), "not_found")
            await refused(typing_start(mallory, elsewhere, "stop"), "not_found")
        backwards = f"p:{users.bob}:{users.alice}"  # one conversation, one spelling: the users sorted
        for fields in ({}, {"conversation": 7}, {"conversation": ""}, {"conversation": None}, {"conversation": "nonsense"},
                       {"conversation": "p:zed"}, {"conversation": backwards}, {"conversation": conversation, "state": "start"},
                       {"conversation": "g:" + "x" * 65}):
            await refused(alice.request({"op": "typing.start", **fields}), "bad_frame")
        await refused(alice.request({"op": "typing.pause", "conversation": conversation}), "unknown_op")
        # nothing was relayed (and no throttle taken): alice's first real notice goes, and is bob's first
        assert (await typing_start(alice, conversation))["relayed"] is True
        assert (await next_typing(bob))["user"] == users.alice
    finally:
        for client in (alice, bob, mallory):
            await client.close()


async def test_typing_reaches_nobody_a_message_could_not(stack, users) -> None:
    """A one-to-one notice passes the send's checks (read only): blocked either way, or the peer
    takes messages from contacts only -> ``not_found``, nothing relayed, no throttle taken."""
    alice, bob = await connect(stack, users.alice), await connect(stack, users.bob)
    carol, mallory = await connect(stack, users.carol), await connect(stack, users.mallory)
    try:
        await bob.request({"op": "block", "user": users.mallory})
        await carol.request({"op": "set_privacy", "dm": "contacts"})
        with_bob, with_carol = direct_conversation(users.bob, users.mallory), direct_conversation(users.carol, users.mallory)
        await refused(mallory.send_text(users.bob, "hi", attempts=1), "blocked")
        await refused(mallory.send_text(users.carol, "hi", attempts=1), "contacts_only")
        for state in ("start", "stop"):
            await refused(typing_start(mallory, with_bob, state), "not_found")
            await refused(typing_start(bob, with_bob, state), "not_found")  # the blocker neither: either way
            await refused(typing_start(mallory, with_carol, state), "not_found")
        # nothing reached bob, carol or mallory: the first notice each gets is one sent after those
        await carol.send_text(users.alice, "you may answer me")  # so alice may write (and type) to carol
        for peer, client in ((users.bob, bob), (users.carol, carol)):
            await relayed_now(alice, direct_conversation(users.alice, peer))
            assert (await next_typing(client))["user"] == users.alice
        await relayed_now(carol, with_carol)  # carol may write to mallory: her privacy is about who writes to her
        assert await next_typing(mallory) == {"op": "typing", "conversation": with_carol, "user": users.carol, "state": "start"}
        # the block lifted, mallory's notice goes (and at once: the refused ones took no throttle)
        await bob.request({"op": "unblock", "user": users.mallory})
        assert (await typing_start(mallory, with_bob))["relayed"] is True
        assert (await next_typing(bob))["user"] == users.mallory
    finally:
        for client in (alice, bob, carol, mallory):
            await client.close()


async def test_a_big_groups_members_online_are_looked_up_once_a_second(any_redis, monkeypatch) -> None:
    """Many notices in a group with many members online cost one online-index lookup per
    second and process (lookups at once share one); a small group is looked up every time
    (exact); the process keeps at most CACHE_GROUPS groups."""
    import uuid

    from imflow.core import ephemeral
    from imflow.core.storage import keys, online

    monkeypatch.setattr(ephemeral, "CACHE_FROM", 5)
    monkeypatch.setattr(ephemeral, "ONLINE_TTL_S", 0.3)
    looked_up: list[str] = []
    real = online.members_online

    async def counted(redis, conversation: str) -> dict:
        looked_up.append(conversation)
        return await real(redis, conversation)

    monkeypatch.setattr(online, "members_online", counted)
    run = uuid.uuid4().hex[:8]
    big, small = [f"big{i}-{run}" for i in range(3)], f"small-{run}"
    for gid, online_now in [(gid, 8) for gid in big] + [(small, 3)]:
        await any_redis.hset(keys.group_members(gid), mapping={f"u{i}": "member" for i in range(10)})
        await any_redis.hset(keys.group_online(gid), mapping={f"gw{i % 2}|u{i}": 1 for i in range(online_now)})
    frame = {"op": "typing", "conversation": f"g:{big[0]}", "user": "u0", "state": "start"}
    try:
        counts = await asyncio.gather(*(push_to_online_members(any_redis, f"g:{big[0]}", frame, skip_user=f"u{i}")
                                        for i in range(6)))
        assert counts == [7] * 6 and await push_to_online_members(any_redis, f"g:{big[0]}", frame) == 8
        assert looked_up == [f"g:{big[0]}"], "seven notices, one lookup"
        for _ in range(2):
            assert await push_to_online_members(any_redis, f"g:{small}", frame) == 3
        assert looked_up.count(f"g:{small}") == 2, "a small group: looked up every time"

        async def looked_up_again() -> bool:
            await push_to_online_members(any_redis, f"g:{big[0]}", frame)
            return looked_up.count(f"g:{big[0]}") == 2

        assert await eventually(looked_up_again, timeout=10, interval=0.05), "after the interval, a fresh lookup"
        monkeypatch.setattr(ephemeral, "CACHE_GROUPS", 2)
        for gid in big:
            await push_to_online_members(any_redis, f"g:{gid}", frame)
        assert len(any_redis.__dict__[ephemeral._CACHE]) <= 2, "bounded"
    finally:
        any_redis.__dict__.pop(ephemeral._CACHE, None)
        for gid in [*big, small]:
            await any_redis.delete(keys.group_members(gid), keys.group_online(gid))


async def test_the_throttle_lets_one_notice_through_per_interval(any_redis) -> None:
    """The Lua script itself, on fakeredis and the real Redis: 0 (go) once per interval, else the
    ms left, then 0 again once the interval has passed."""
    key = typing_plugin.throttle_key("alice", "p:alice:bob", "start")
    throttle = script(any_redis, typing_plugin.SCRIPT)
    await any_redis.delete(key)
    assert await throttle(keys=[key], args=[300]) == 0
    waits = [int(await throttle(keys=[key], args=[300])) for _ in range(5)]
    assert all(1 <= wait <= 300 for wait in waits)
    assert await eventually(lambda: _goes(throttle, key), timeout=10, interval=0.05)
    assert key.startswith("im:typing:{") and "alice" in key  # under the user's hash tag


async def _goes(throttle, key: str) -> bool:
    return int(await throttle(keys=[key], args=[300])) == 0


async def test_push_to_online_members_skips_the_typer_and_nobody_offline(any_redis) -> None:
    """The core push: one event per gateway holding a member, marked low priority."""
    from imflow.core.storage import keys, presence, redis_client

    # each gateway's channel as a gateway hears it (sharded pub/sub on a cluster)
    gw_a = await redis_client.subscribe(any_redis, keys.gateway_channel("gw-a"))
    gw_b = await redis_client.subscribe(any_redis, keys.gateway_channel("gw-b"))
    try:
        await presence.changed(any_redis, "gw-a", [("alice", True), ("bob", True)])
        await presence.changed(any_redis, "gw-b", [("alice", True)])
        frame = {"op": "typing", "conversation": "p:alice:bob", "user": "alice", "state": "start"}
        assert await push_to_online_members(any_redis, "p:alice:bob", frame, skip_user="alice") == 1
        assert await push_to_online_members(any_redis, "p:alice:carol", frame, skip_user="alice") == 0  # carol is offline
        assert await push_to_online_members(any_redis, "nonsense", frame) == 0

        async def published() -> list:
            message = await gw_a.get_message(ignore_subscribe_messages=True, timeout=0.2)
            return orjson.loads(message["data"]) if message else []

        events = await eventually(published, timeout=10)
        assert events == [{"users": ["bob"], "frame": frame, "priority": int(Priority.LOW)}]
        assert await gw_b.get_message(ignore_subscribe_messages=True, timeout=0.3) is None  # nothing for gw-b
    finally:
        await gw_a.aclose()
        await gw_b.aclose()
        await presence.changed(any_redis, "gw-a", [("alice", False), ("bob", False)])
        await presence.changed(any_redis, "gw-b", [("alice", False)])


async def test_a_connection_behind_drops_typing_first_and_keeps_messages() -> None:
    """The gateway's routing honours the event's priority: behind, a typing notice is dropped
    while a message frame waits its turn."""
    hub = Hub(None, "gw")  # type: ignore[arg-type]  # routing needs no Redis
    connection, sink = direct_connection()
    connection.user = "bob"
    hub.add(connection)
    connection.push_raw(b"x" * (LIMIT + 1))  # the socket's buffer is past its mark: behind
    assert connection.slow
    typing_event = {"users": ["bob"], "frame": {"op": "typing", "user": "alice"}, "priority": int(Priority.LOW)}
    message_event = {"users": ["bob"], "frame": {"op": "msg", "message": {}}}
    hub._route(orjson.dumps([typing_event, message_event]))
    assert connection.dropped == 1 and connection.queued == 1
    sink.drain(10 * LIMIT)
    assert [orjson.loads(payload)["op"] for payload in sink.payloads()[1:]] == ["msg"]


JSON = st.recursive(st.none() | st.booleans() | st.integers(0, 2**53 - 1) | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=6)
CONVERSATIONS = (st.sampled_from(["p:alice:bob", "p:bob:alice", "p:alice:alice", "p:a:alice", "g:g1", "p:alice", "p:alice:"])
                 | st.from_regex(r"[pg]:[a-z]{0,6}(:[a-z]{0,6})?", fullmatch=True) | JSON)
FIELDS = st.builds(lambda given, extra: {**extra, **given},
                   st.fixed_dictionaries({}, optional={"conversation": CONVERSATIONS}),
                   st.dictionaries(st.sampled_from(["state", "user", "to", ""]) | st.text(max_size=10), JSON, max_size=2)
                   | st.just({}))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=FIELDS)
def test_any_fields_get_a_coded_answer_and_only_a_members_notice_is_relayed(fields: dict) -> None:
    """Whatever a client puts in the frame: a reply, ``bad_frame`` or ``not_found``, never another
    error; a notice reaches bob (online) only when alice named a conversation she is in with him."""
    from imflow.core.storage import keys, presence

    async def run() -> tuple[str, list]:
        redis = fakeredis.FakeAsyncRedis()
        pubsub = redis.pubsub()
        await pubsub.subscribe(keys.gateway_channel("gw"))
        assert (await pubsub.get_message(timeout=1))["type"] == "subscribe"  # else a None below could be this
        await presence.changed(redis, "gw", [("bob", True)])
        # open accounts: bob (who has none) may be written to, as in the send check
        context = OperationContext("alice", "gw", redis, Settings(accounts="open"), None, None)  # type: ignore[arg-type]
        try:
            reply = await typing_plugin.Typing().relay(context, fields, "start")
            outcome = "relayed" if reply["relayed"] else "throttled"
        except ImflowError as error:
            outcome = str(error.code)
        published = []
        while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.01)) is not None:
            published += orjson.loads(message["data"])
        await pubsub.aclose()
        await redis.aclose()
        return outcome, published

    outcome, published = asyncio.run(run())
    conversation = fields.get("conversation")
    try:
        valid = set(fields) == {"conversation"} and TypeAdapter(ConversationId).validate_python(conversation, strict=True)
    except ValidationError:
        valid = False
    if not valid:
        assert outcome == "bad_frame", (fields, outcome)
    else:  # alice is in no group here; in a one-to-one conversation if she is one of its two users
        assert outcome == ("relayed" if "alice" in (direct_members(conversation) or ()) else "not_found"), (fields, outcome)
    to_bob = outcome == "relayed" and "bob" in (direct_members(conversation) or ())
    assert published == ([{"users": ["bob"], "priority": 0, "frame": {
        "op": "typing", "conversation": conversation, "user": "alice", "state": "start"}}] if to_bob else [])
