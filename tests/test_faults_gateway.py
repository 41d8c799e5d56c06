"""Gateway loss (#13 item 5): a gateway killed with SIGKILL → its clients reconnect to another
and lose nothing after their sync, and its presence entries (the users' gateways, the groups'
online members) are swept within seconds by the live gateways' heartbeat, not left until the
users reconnect; no push is routed to it meanwhile.

The liveness rules themselves (core/storage/gateway_liveness.py) are tested on fakeredis and the real
redis-server with hubs in this process; the kill on the real stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid

import pytest

from imflow.core.storage import gateway_liveness, keys, presence, redis_client
from imflow.core.storage.gateway_liveness import Beat
from imflow.core.storage.scripts import script
from imflow.gateway.hub import Hub
from imflow.testing import eventually

BEAT_S, TTL_S = 0.05, 0.3  # in-process hubs: fast, so the tests take a second or so


class Held:
    """Stands for a connection the hub holds (only counted by these tests)."""


def hub(redis, node: str) -> Hub:
    return Hub(redis, node, heartbeat_seconds=BEAT_S, liveness_ttl_seconds=TTL_S)


async def die(gateway: Hub) -> None:
    """What SIGKILL does to a gateway: it stops at once and cleans nothing up."""
    for task in (gateway._heartbeat_task, gateway._listener):
        assert task is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await gateway.lag.stop()


async def in_group(redis, gid: str, users: list[str]) -> None:
    await redis.hset(keys.group_members(gid), mapping=dict.fromkeys(users, "member"))
    for user in users:
        await redis.sadd(keys.user_groups(user), gid)


async def entries_naming(redis, node: str, users: list[str], gid: str) -> list[str]:
    """Every presence entry that names ``node``."""
    found = [f"gateways of {user}" for user in users if await redis.hexists(keys.user_gateways(user), node)]
    found += [f"online in {gid}: {field.decode()}" for field in await redis.hkeys(keys.group_online(gid))
              if field.decode().startswith(f"{node}|")]
    found += [f"index of {node}: {user.decode()}" for user in await redis.hkeys(keys.gateway_users(node))]
    return found


async def test_a_dead_gateways_entries_are_swept_by_a_live_one(any_redis) -> None:
    survivor, victim = hub(any_redis, "gw-a"), hub(any_redis, "gw-b")
    await survivor.start()
    await victim.start()
    await eventually(lambda: _beating(any_redis, {"gw-a", "gw-b"}))
    users = ["ann", "bob", "cid"]
    await in_group(any_redis, "team", users)
    for user in users:
        await presence.connected(any_redis, user, "gw-b")
    await presence.connected(any_redis, "ann", "gw-a")  # ann is on both gateways
    try:
        await die(victim)

        async def swept() -> bool:
            return not await entries_naming(any_redis, "gw-b", users, "team")

        await eventually(swept, timeout=10, interval=0.05)
        # what names the live gateway is untouched, and the dead one is forgotten
        assert await presence.gateways_of(any_redis, "ann") == ["gw-a"]
        assert await any_redis.hkeys(keys.group_online("team")) == [b"gw-a|ann"]
        assert await any_redis.zscore(keys.gateways_alive(), "gw-b") is None
    finally:
        await survivor.stop()


async def test_no_push_goes_to_a_gateway_presumed_dead_before_it_is_swept(any_redis) -> None:
    assert await gateway_liveness.beat(any_redis, "gw-b", 0.2) == Beat.REGISTERED
    await presence.connected(any_redis, "ann", "gw-b")
    await presence.connected(any_redis, "ann", "gw-a")  # never beat (an older gateway): routed to
    assert sorted(await presence.gateways_of(any_redis, "ann")) == ["gw-a", "gw-b"]

    async def skipped() -> bool:
        return await presence.gateways_of(any_redis, "ann") == ["gw-a"]

    await eventually(skipped, timeout=5, interval=0.05)
    assert await any_redis.hexists(keys.user_gateways("ann"), "gw-b"), "nobody swept it yet"


async def test_a_gateway_presumed_dead_but_alive_writes_its_entries_back(any_redis) -> None:
    """A gateway that stalled longer than the TTL was swept; its connections are still open,
    so when it beats again it writes their entries back."""
    survivor, stalled = hub(any_redis, "gw-a"), hub(any_redis, "gw-b")
    await survivor.start()
    await stalled.start()
    await eventually(lambda: _beating(any_redis, {"gw-a", "gw-b"}))
    await in_group(any_redis, "team", ["ann", "bob"])
    for user in ("ann", "bob"):
        stalled.connections[user].add(Held())  # type: ignore[arg-type]
        await presence.connected(any_redis, user, "gw-b")
    stalled.connections["bob"].add(Held())  # type: ignore[arg-type]
    await presence.connected(any_redis, "bob", "gw-b")
    try:
        assert stalled._heartbeat_task is not None
        stalled._heartbeat_task.cancel()  # the stall

        async def swept() -> bool:
            return not await entries_naming(any_redis, "gw-b", ["ann", "bob"], "team")

        await eventually(swept, timeout=10, interval=0.05)
        stalled._heartbeat_task = asyncio.create_task(stalled._heartbeat())  # it runs again

        async def written_back() -> bool:
            return (await any_redis.hgetall(keys.user_gateways("bob")) == {b"gw-b": b"2"}
                    and await any_redis.hgetall(keys.group_online("team")) == {b"gw-b|ann": b"1", b"gw-b|bob": b"2"}
                    and await any_redis.hgetall(keys.gateway_users("gw-b")) == {b"ann": b"1", b"bob": b"2"})

        await eventually(written_back, timeout=10, interval=0.05)
        # and it counts down to nothing as its connections close
        for user, times in (("ann", 1), ("bob", 2)):
            stalled.connections.pop(user)
            for _ in range(times):
                await presence.disconnected(any_redis, user, "gw-b")
        assert await entries_naming(any_redis, "gw-b", ["ann", "bob"], "team") == []
    finally:
        await stalled.stop()
        await survivor.stop()


async def test_a_sweep_in_progress_is_not_undone_by_a_late_beat(any_redis) -> None:
    """The beat of a gateway being swept says so; the sweep's end does not forget it then."""
    assert await gateway_liveness.beat(any_redis, "gw-b", 0.05) == Beat.REGISTERED
    await eventually(lambda: _dead(any_redis, "gw-b"), timeout=5, interval=0.02)
    claim = script(any_redis, "gateway_claim")
    swept = script(any_redis, "gateway_swept")
    lock = [keys.gateways_alive(), keys.gateway_sweeping("gw-b")]
    assert await claim(keys=lock, args=["gw-b", "t1", 10_000]) == 1
    assert await claim(keys=lock, args=["gw-b", "t2", 10_000]) == 0, "one sweeper at a time"
    assert await gateway_liveness.beat(any_redis, "gw-b", 10) == Beat.BEING_SWEPT
    assert await swept(keys=lock, args=["gw-b", "t1"]) == 0, "it came back: not forgotten"
    assert not await any_redis.exists(keys.gateway_sweeping("gw-b"))
    assert await gateway_liveness.beat(any_redis, "gw-b", 10) == Beat.ALIVE


async def test_a_gateway_started_under_a_former_processs_name_starts_clean(any_redis) -> None:
    await in_group(any_redis, "team", ["ann"])
    await presence.connected(any_redis, "ann", "gw-a")  # left by a process of the same name that died
    again = hub(any_redis, "gw-a")
    await again.start()
    try:
        async def clean() -> bool:
            return not await entries_naming(any_redis, "gw-a", ["ann"], "team")

        await eventually(clean, timeout=5, interval=0.05)
    finally:
        await again.stop()
    assert await any_redis.zscore(keys.gateways_alive(), "gw-a") is None, "a clean stop leaves the registry"


async def test_a_sweep_walks_a_big_gateway_in_chunks(any_redis) -> None:
    """More users than one sweep pipeline holds: every entry goes, the live gateway's stay."""
    users = [f"u{i:04d}" for i in range(2 * gateway_liveness.SWEEP_CHUNK + 100)]
    await in_group(any_redis, "big", users)
    async with any_redis.pipeline(transaction=False) as pipe:
        for user in users:  # what presence.connected writes, in one round trip
            pipe.hset(keys.user_gateways(user), mapping={"gw-b": 1, "gw-a": 1})
            pipe.hset(keys.gateway_users("gw-b"), user, 1)
            pipe.hset(keys.group_online("big"), mapping={f"gw-b|{user}": 1, f"gw-a|{user}": 1})
        await pipe.execute()
    assert await gateway_liveness.sweep(any_redis, "gw-b") == len(users)
    assert await entries_naming(any_redis, "gw-b", users, "big") == []
    assert await any_redis.hlen(keys.group_online("big")) == len(users)
    assert await presence.gateways_of(any_redis, users[-1]) == ["gw-a"]


def test_the_liveness_ttl_outlasts_two_heartbeats() -> None:
    from pydantic import ValidationError

    from imflow.core.settings import Settings

    defaults = Settings()
    assert defaults.gateway_liveness_ttl_seconds >= 3 * defaults.gateway_heartbeat_seconds
    with pytest.raises(ValidationError, match="at least twice"):
        Settings(gateway_heartbeat_seconds=4, gateway_liveness_ttl_seconds=6)


async def _beating(redis, nodes: set[str]) -> bool:
    return nodes <= {node.decode() for node in await redis.zrange(keys.gateways_alive(), 0, -1)}


async def _dead(redis, node: str) -> bool:
    return node in await gateway_liveness.dead_gateways(redis)


# -- the real stack: SIGKILL of the gateway holding half the receivers


@pytest.mark.kafka
@pytest.mark.redis
async def test_a_killed_gateways_clients_move_and_its_entries_are_swept(kafka_url, redis_url, tmp_path) -> None:
    from stacks import real_stack
    from test_faults_redis import Traffic

    async with redis_client.connect(redis_url) as redis:
        await redis_client.flush(redis)
        stack = await asyncio.to_thread(real_stack, tmp_path, kafka_url, redis_url, 2)
        try:
            traffic = Traffic(stack, uuid.uuid4().hex[:6])
            await traffic.create_group()
            traffic.start()
            loop = asyncio.get_running_loop()
            moved = [r.user for r in traffic.receivers if r.gateway == 1]

            async def on_gateway_1() -> str | None:
                # the dead gateway's name: where the receivers that start on gateway 1 are
                nodes = {node for user in moved for node in await presence.gateways_of(redis, user)}
                return nodes.pop() if len(nodes) == 1 else None

            node = await eventually(on_gateway_1, timeout=30)
            await eventually(lambda: _acked(traffic, 300), timeout=30)
            gid = traffic.group.removeprefix("g:")  # type: ignore[union-attr]
            assert await entries_naming(redis, node, moved, gid)
            traffic.alive.remove(1)
            victim = stack.gateways.pop(1)  # killed on purpose: not to be stopped gracefully
            victim.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(victim.terminate)  # reaps it and closes its log
            killed_at = loop.time()
            stack.ports.pop(1)

            async def swept() -> bool:
                return not await entries_naming(redis, node, moved, gid)

            await eventually(swept, timeout=20, interval=0.1)
            sweep_s = loop.time() - killed_at
            assert node not in await presence.gateways_of(redis, moved[0])
            more = len(traffic.answers) + 300
            await eventually(lambda: _acked(traffic, more), timeout=30)
            await traffic.stop()
            print(f"\nswept {sweep_s:.1f} s after the kill; {len(traffic.answers)} messages ACKed; "
                  f"longest ACK gap from the kill {traffic.longest_ack_gap(killed_at):.2f} s; sender errors {dict(traffic.errors)}")
            assert sweep_s < 15, "swept within seconds (TTL 6 s + a heartbeat)"
            await traffic.check()
            for user in moved:  # they came back, on the live gateway
                receiver = next(r for r in traffic.receivers if r.user == user)
                assert receiver.sessions >= 2
            stack.assert_alive()
        finally:
            await asyncio.to_thread(stack.stop)


async def _acked(traffic, count: int) -> bool:
    return len(traffic.answers) >= count
