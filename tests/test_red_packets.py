"""Red packets: the split in Lua (property test), concurrent grabs on the real Redis, and the
plugin end to end through an embedded imflow."""

from __future__ import annotations

import asyncio
import random

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imflow.client import ClientError
from imflow.core.models import direct_conversation
from imflow.core.storage import redis_client
from imflow.plugins import red_packets
from imflow.testing import eventually


def open_packet(client, mid: int, total: int, count: int, expires_at: int = 1 << 50) -> None:
    client.register_script(red_packets.lua_source("open"))(keys=[red_packets.packet_key(mid)], args=[total, count, "s", "p:a:b", expires_at])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # no clock in the verdict
@given(
    total=st.integers(1, 20_000),
    count=st.integers(1, 300),
    extra=st.integers(0, 20),
    seed=st.integers(0, 2**32),
    rands=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=20),
)
def test_any_split_sums_to_the_total_with_every_share_at_least_a_cent(total, count, extra, seed, rands) -> None:
    count = min(count, total)
    client = fakeredis.FakeRedis()
    open_packet(client, 1, total, count)
    grab = client.register_script(red_packets.lua_source("grab"))
    users = [f"u{i}" for i in range(count + extra)]
    random.Random(seed).shuffle(users)
    shares = {}
    for i, user in enumerate(users):
        status, share, _, _ = grab(keys=[red_packets.packet_key(1), red_packets.grabs_key(1)], args=[user, 0, rands[i % len(rands)]])
        if i < count:
            assert status == 1 and share >= 1
            shares[user] = share
        else:
            assert status == -4, "no share beyond the count"
    assert sum(shares.values()) == total and len(shares) == count
    again = grab(keys=[red_packets.packet_key(1), red_packets.grabs_key(1)], args=[users[0], 0, 0.5])
    assert again[0] == -3 and again[1] == shares[users[0]], "nobody grabs twice"


@pytest.mark.redis
async def test_a_thousand_concurrent_grabs_on_the_real_redis(redis_url: str, real_redis) -> None:
    """1,000 grabbers, each on a connection of its own, race for 500 shares of 100.00."""
    await real_redis.register_script(red_packets.lua_source("open"))(
        keys=[red_packets.packet_key(7)], args=[10_000, 500, "s", "p:a:b", 1 << 50]
    )
    clients = [redis_client.connect(redis_url) for _ in range(50)]
    scripts = [c.register_script(red_packets.lua_source("grab")) for c in clients]

    async def grabber(i: int) -> tuple[str, int, int]:
        status, share, _, _ = await scripts[i % 50](
            keys=[red_packets.packet_key(7), red_packets.grabs_key(7)], args=[f"user{i}", 0, random.random()]
        )
        return f"user{i}", int(status), int(share)

    results = await asyncio.gather(*(grabber(i) for i in range(1000)))
    for client in clients:
        await client.aclose()
    winners = [(user, share) for user, status, share in results if status == 1]
    assert len(winners) == 500
    assert sum(share for _, share in winners) == 10_000
    assert all(share >= 1 for _, share in winners)
    assert sum(1 for _, status, _ in results if status == -4) == 500
    grabs = await real_redis.hgetall(red_packets.grabs_key(7))
    assert {k.decode(): int(v) for k, v in grabs.items()} == dict(winners)


def red_packet(total: int, count: int, greeting: str = "") -> dict:
    return {"type": "red_packet", "body": {"total_cents": total, "count": count, "greeting": greeting}}


async def test_send_grab_status_and_bad_input(imflow_server) -> None:
    async with imflow_server() as server:
        conversation = direct_conversation("alice", "bob")
        async with await server.client("alice") as alice, await server.client("bob") as bob, await server.client("mallory") as mallory:
            for total, count, code in [(0, 1, "red_packet.bad_amount"), (-5, 1, "bad_frame"), (100, 0, "red_packet.bad_amount"),
                                       (5, 6, "red_packet.bad_amount"), (20_001, 1, "red_packet.too_large")]:
                with pytest.raises(ClientError) as refused:
                    await alice.send({"to": "bob", **red_packet(total, count)})
                assert refused.value.code == code
            with pytest.raises(ClientError) as malformed:
                await alice.send({"to": "bob", "type": "red_packet", "body": {"total_cents": "100", "count": 2}})
            assert malformed.value.code == "bad_frame"

            sent = await alice.send({"to": "bob", **red_packet(1000, 2, "happy new year")})
            push = await bob.next_message()
            assert push["message"]["type"] == "red_packet" and push["message"]["body"]["greeting"] == "happy new year"
            mid = sent["mid"]

            async def grab(client, conv=conversation):
                return await client.request({"op": "red_packet.grab", "conversation": conv, "mid": mid})

            first = await eventually(lambda: _grab_when_open(bob, conversation, mid))
            with pytest.raises(ClientError) as twice:
                await grab(bob)
            assert twice.value.code == "red_packet.already_grabbed"
            with pytest.raises(ClientError) as outsider:
                await grab(mallory)
            assert outsider.value.code == "red_packet.not_found", "a non-member learns nothing, as from status and history"
            second = await grab(alice)
            assert first["share_cents"] + second["share_cents"] == 1000 and second["count_left"] == 0
            state = await alice.request({"op": "red_packet.status", "conversation": conversation, "mid": mid})
            assert state["grabs"] == {"bob": first["share_cents"], "alice": second["share_cents"]}
            assert (state["cents_left"], state["count_left"], state["refunded"]) == (0, 0, 0)


async def _grab_when_open(client, conversation: str, mid: int):
    """The packet opens when the ingest agent has stored the message: retry until then."""
    try:
        return await client.request({"op": "red_packet.grab", "conversation": conversation, "mid": mid})
    except ClientError as error:
        if error.code == "red_packet.not_found":
            return None
        raise


async def test_unclaimed_amount_is_refunded_on_expiry(imflow_server, monkeypatch: pytest.MonkeyPatch) -> None:
    # an hour to grab in, then the plugin's clock (which the grab and the refund timer read) is
    # moved past the expiry: a slow machine can neither miss the grab nor wait for the expiry
    ttl_s = 3600
    monkeypatch.setenv("IMFLOW_RED_PACKETS_TTL_SECONDS", str(ttl_s))
    async with imflow_server() as server:
        conversation = direct_conversation("alice", "bob")
        async with await server.client("alice") as alice, await server.client("bob") as bob:
            sent = await alice.send({"to": "bob", **red_packet(300, 3)})
            grabbed = await eventually(lambda: _grab_when_open(bob, conversation, sent["mid"]))
            real_now_ms = red_packets.now_ms
            monkeypatch.setattr(red_packets, "now_ms", lambda: real_now_ms() + (ttl_s + 1) * 1000)

            async def refunded() -> dict | None:
                state = await alice.request({"op": "red_packet.status", "conversation": conversation, "mid": sent["mid"]})
                return state if state["refunded"] else None

            state = await eventually(refunded, timeout=10, interval=0.2)
            assert state["refunded"] == 300 - grabbed["share_cents"] and state["cents_left"] == 0
            with pytest.raises(ClientError) as late:
                await alice.request({"op": "red_packet.grab", "conversation": conversation, "mid": sent["mid"]})
            assert late.value.code == "red_packet.expired"


async def test_concurrent_grabs_through_the_gateways(stack, users) -> None:
    """300 members of a group grab a 100-share packet at once, through both gateways of the stack."""
    from imflow.client import Client

    names = [getattr(users, f"m{i}") for i in range(300)]
    clients: list[Client] = []  # the members, then the host: all closed however the test ends
    try:
        for start in range(0, 300, 50):
            connecting = await asyncio.gather(*(Client.connect(stack.url(i), stack.token(names[i])) for i in range(start, start + 50)),
                                              return_exceptions=True)
            clients += [c for c in connecting if isinstance(c, Client)]
            failed = [c for c in connecting if not isinstance(c, Client)]
            if failed:
                raise failed[0]
        members = list(clients)
        host = await Client.connect(stack.url(0), stack.token(users.host))
        clients.append(host)
        group = await host.request({"op": "create_group", "name": "race", "members": names})
        sent = await host.send({"conversation": group["conversation"], **red_packet(5_000, 100)}, timeout=30)
        await asyncio.gather(*(client.next_message(timeout=60) for client in members))

        async def grab(client) -> tuple[str, int]:
            try:
                reply = await client.request({"op": "red_packet.grab", "conversation": group["conversation"], "mid": sent["mid"]}, timeout=60)
                return "won", reply["share_cents"]
            except ClientError as error:
                return error.code, 0

        results = await asyncio.gather(*(grab(client) for client in members))
        won = [cents for outcome, cents in results if outcome == "won"]
        assert len(won) == 100 and sum(won) == 5_000 and min(won) >= 1
        assert sorted({outcome for outcome, _ in results}) == ["red_packet.empty", "won"]
        state = await host.request({"op": "red_packet.status", "conversation": group["conversation"], "mid": sent["mid"]})
        assert sum(state["grabs"].values()) == 5_000 and state["cents_left"] == 0
    finally:
        for client in clients:
            await client.close()
