"""Write and read fan-out in the core (core/sending.py, core/storage/fan_out.py) on fakeredis and
the real redis-server: one stored copy, counts flushed from seqs, replays and switches."""

from __future__ import annotations

import asyncio
import itertools

import orjson
import pytest

from imflow.core import groups
from imflow.core.agents import AgentContext
from imflow.core.hookspecs import hookimpl
from imflow.core.ids import IdGenerator
from imflow.core.models import SendCommand
from imflow.core.plugin_calls import Hooks, empty_manager
from imflow.core.sending import handle_sends
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import fan_out, inbox, keys, presence, redis_client

SETTINGS = Settings(read_fan_out_threshold=5, accounts="open")  # users here have no accounts
IDS = IdGenerator(0)  # partition 0 is node 0
CMIDS = itertools.count()


def send(sender: str, conversation: str, text: str = "hi", cmid: str | None = None) -> tuple[SendCommand, int]:
    command = SendCommand(
        sender=sender, client_msg_id=cmid or f"c{next(CMIDS)}", conversation=conversation,
        body={"text": text}, sent_at_ms=1, gateway="gw-a", origin="conn-1",
    )
    return command, 0


class Policy:
    """A plugin answering ``imflow_fan_out_policy`` with a test's function."""

    def __init__(self, choose_mode) -> None:
        self.choose_mode = choose_mode

    @hookimpl
    async def imflow_fan_out_policy(self, conversation: str, members: int, sender: str):
        return await self.choose_mode(conversation, members, sender)


async def run(redis, batch, choose_mode=None):
    manager = empty_manager()
    if choose_mode is not None:
        manager.register(Policy(choose_mode), name="policy")
    # one generator for the test, shared by every run (mids keep rising)
    ctx = AgentContext(settings=SETTINGS, redis=redis, producer=None, hooks=Hooks(manager), generators={0: IDS})
    return await handle_sends(ctx, batch)


async def unread(redis, user: str, conversation: str) -> tuple[int, int]:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.unread(user), conversation)
        pipe.get(keys.unread_total(user))
        count, total = await pipe.execute()
    return int(count or 0), int(total or 0)


async def published(redis, node: str):
    """Subscribe to a gateway's channel; returns a function giving the events seen so far.

    Nothing is left to how long a poll waits: the subscription is confirmed before any send,
    and ``events`` publishes a marker of its own and reads up to it. Redis delivers a channel's
    messages in the order it ran the PUBLISH commands, so everything published before the
    call (by a send that has returned) is in by then, and nothing later is waited for.
    """
    channel = keys.gateway_channel(node)
    pubsub = await redis_client.subscribe(redis, channel)  # returns once subscribed (sharded on a cluster)
    seen: list[dict] = []
    markers = itertools.count()

    async def events() -> list[dict]:
        marker = f"end of events {next(markers)}".encode()
        await redis_client.publish_sharded(redis, channel, marker)
        async with asyncio.timeout(30):
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    continue
                if message["data"] == marker:
                    return seen
                seen.extend(orjson.loads(message["data"]))

    return pubsub, events


async def big_group(redis, size: int) -> tuple[str, list[str]]:
    members = [f"m{i:03d}" for i in range(size)]
    await groups.create(Services(SETTINGS, redis), groups.CreateGroup(members[0], "big", tuple(members[1:]), gid="big"))
    return "g:big", members


async def test_read_fan_out_stores_once_and_counts_from_seqs(any_redis) -> None:
    conversation, members = await big_group(any_redis, 8)
    stored = await run(any_redis, [send("m000", conversation), send("m001", conversation), send("m000", conversation)])
    assert [m.seq for m in stored] == [1, 2, 3]
    assert await any_redis.zcard(keys.conversation_log(conversation)) == 3
    for member in members:  # no per-member copy: nobody's inbox holds a group message
        assert await any_redis.zcard(keys.inbox(member)) == 0
    # the senders are up to date with their own messages at once; the others after the flush
    assert await unread(any_redis, "m000", conversation) == (0, 0)
    assert await unread(any_redis, "m001", conversation) == (0, 0), "read up to seq 2, seq 3 not counted yet"
    assert await unread(any_redis, "m005", conversation) == (0, 0)
    assert await fan_out.flush_pending(any_redis) == 8
    assert await any_redis.hlen(keys.fan_out_pending()) == 0
    for member in members[2:]:
        assert await unread(any_redis, member, conversation) == (3, 3)
    assert await unread(any_redis, "m001", conversation) == (1, 1)
    # a flush again, and a replay of the whole batch, change nothing
    assert await fan_out.flush_pending(any_redis) == 0
    again = await run(any_redis, [send("m000", conversation, cmid=stored[0].client_msg_id)])
    assert [m.seq for m in again] == [1]
    await fan_out.flush_pending(any_redis)
    assert await unread(any_redis, "m007", conversation) == (3, 3)
    read = await inbox.mark_read(any_redis, "m007", conversation, 2)
    assert (read.count, read.total) == (1, 1)


async def test_a_sync_or_read_brings_one_member_up_to_date_before_the_flush(any_redis) -> None:
    conversation, _ = await big_group(any_redis, 6)
    await run(any_redis, [send("m000", conversation) for _ in range(4)])
    assert await unread(any_redis, "m003", conversation) == (0, 0), "not flushed yet"
    marks = await fan_out.catch_up(any_redis, "m003")
    assert marks == {"big": 4}
    assert await unread(any_redis, "m003", conversation) == (4, 4)
    assert await unread(any_redis, "m004", conversation) == (0, 0), "only the user who asked"
    messages = await fan_out.unread_messages(any_redis, "m003", marks, 100)
    assert [orjson.loads(m)["seq"] for m in messages] == [4, 3, 2, 1]
    await inbox.mark_read(any_redis, "m003", conversation, 3)
    assert [orjson.loads(m)["seq"] for m in await fan_out.unread_messages(any_redis, "m003", marks, 100)] == [4]


async def test_online_members_get_one_event_per_gateway_and_replays_push_nothing(any_redis) -> None:
    conversation, members = await big_group(any_redis, 7)
    for member in members[:3]:
        await presence.connected(any_redis, member, "gw-a")
    await presence.connected(any_redis, "m003", "gw-b")
    pubsub_a, events_a = await published(any_redis, "gw-a")
    pubsub_b, events_b = await published(any_redis, "gw-b")
    try:
        command = send("m001", conversation)
        await run(any_redis, [command])
        pushes_a = [e for e in await events_a() if e["push"]["kind"] == "msg"]
        pushes_b = [e for e in await events_b() if e["push"]["kind"] == "msg"]
        assert len(pushes_a) == 1 and sorted(pushes_a[0]["users"]) == ["m000", "m001", "m002"]
        assert pushes_a[0]["skip"] == "conn-1", "not back to the sending connection"
        assert len(pushes_b) == 1 and pushes_b[0]["users"] == ["m003"]
        await run(any_redis, [command])  # Kafka redelivers
        assert [e for e in await events_a() if e["push"]["kind"] == "msg"] == pushes_a
        # someone who left is not pushed to, even if a stale presence entry remained
        await groups.leave(Services(SETTINGS, any_redis), groups.LeaveGroup("m002", "big"))
        await any_redis.hset(keys.group_online("big"), "gw-a|m002", 1)
        await run(any_redis, [send("m001", conversation)])
        latest = [e for e in await events_a() if e["push"]["kind"] == "msg"][-1]
        assert sorted(latest["users"]) == ["m000", "m001"]
    finally:
        for pubsub in (pubsub_a, pubsub_b):
            await pubsub.aclose()


async def test_switching_modes_loses_and_repeats_nothing(any_redis) -> None:
    await groups.create(Services(SETTINGS, any_redis), groups.CreateGroup("a0", "grow", ("a1", "a2"), gid="grow"))
    conversation = "g:grow"
    await run(any_redis, [send("a0", conversation) for _ in range(3)])  # write: 3 members
    await groups.add(Services(SETTINGS, any_redis), groups.AddMembers("a0", "grow", ("a3", "a4", "a5")))  # 6 >= 5: read
    await run(any_redis, [send("a1", conversation) for _ in range(3)])
    await groups.remove(Services(SETTINGS, any_redis), groups.RemoveMember("a0", "grow", "a5"))
    await groups.remove(Services(SETTINGS, any_redis), groups.RemoveMember("a0", "grow", "a4"))  # 4: write again
    await run(any_redis, [send("a0", conversation) for _ in range(2)])
    await fan_out.flush_pending(any_redis)
    for member, seen_from in (("a2", 1), ("a3", 4)):
        marks = await fan_out.catch_up(any_redis, member)
        in_inbox = [orjson.loads(entry)["seq"] for entry in await any_redis.zrange(keys.inbox(member), 0, -1)]
        from_log = [orjson.loads(entry)["seq"] for entry in await fan_out.unread_messages(any_redis, member, marks, 100)]
        assert sorted(set(in_inbox) | set(from_log)) == list(range(seen_from, 9)), member
        assert set(in_inbox) == {s for s in (1, 2, 3, 7, 8) if s >= seen_from}, "each message is in the inbox or the log"
        assert await unread(any_redis, member, conversation) == (9 - seen_from, 9 - seen_from)
    assert await unread(any_redis, "a4", conversation) == (0, 0), "a member who left keeps no count"


async def test_a_policy_picks_the_mode_per_group_and_sender(any_redis) -> None:
    await groups.create(Services(SETTINGS, any_redis), groups.CreateGroup("star", "fans", ("f1", "f2"), gid="fans"))
    seen = []

    async def celebrity(conversation: str, members: int, sender: str):
        seen.append((conversation, members, sender))
        return "read" if sender == "star" else None

    await run(any_redis, [send("star", "g:fans"), send("f1", "g:fans"), send("star", "g:fans")], celebrity)
    assert sorted(set(seen)) == [("g:fans", 3, "f1"), ("g:fans", 3, "star")], "asked once per group and sender"
    inbox_seqs = [orjson.loads(entry)["seq"] for entry in await any_redis.zrange(keys.inbox("f2"), 0, -1)]
    assert inbox_seqs == [2], "only the fan's message went through the inboxes"
    await fan_out.flush_pending(any_redis)
    assert await unread(any_redis, "f2", "g:fans") == (3, 3)


@pytest.mark.parametrize("size", [2, 5, 9])
async def test_the_default_policy_is_the_size_threshold(any_redis, size: int) -> None:
    others = tuple(f"u{i}" for i in range(1, size))
    await groups.create(Services(SETTINGS, any_redis), groups.CreateGroup("u0", "s", others, gid=f"s{size}"))
    await run(any_redis, [send("u0", f"g:s{size}")])
    written = await any_redis.zcard(keys.inbox("u1"))
    assert written == (1 if size < SETTINGS.read_fan_out_threshold else 0)


async def test_a_replay_is_fanned_out_the_way_the_message_first_was(any_redis) -> None:
    await groups.create(Services(SETTINGS, any_redis), groups.CreateGroup("p0", "flip", ("p1", "p2"), gid="flip"))
    command = send("p0", "g:flip")

    async def read(conversation, members, sender):
        return "read"

    await run(any_redis, [command], read)  # first: read fan-out, in no inbox
    await run(any_redis, [command])  # redelivered when the policy would say write
    assert await any_redis.zcard(keys.inbox("p1")) == 0, "not put into inboxes on the replay"
