"""Offline push wiring (core/sending.py ``_notify`` -> core/offline_push.py -> ``imflow_offline_push``)
on fakeredis and the real redis-server: exactly the members with no connection get a push, with
their unread total and whether the message mentions them; muted conversations are skipped; in
read fan-out groups only mentioned members; a Kafka replay pushes nothing twice.
Through a running imflow: tests/test_plugins.py."""

from __future__ import annotations

import itertools

from imflow.core import conversation_settings, groups
from imflow.core.agents import AgentContext
from imflow.core.hookspecs import hookimpl
from imflow.core.ids import IdGenerator
from imflow.core.models import SendCommand
from imflow.core.plugin_calls import Hooks, empty_manager
from imflow.core.plugin_types import OfflinePush
from imflow.core.sending import handle_sends
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import keys, presence

SETTINGS = Settings(read_fan_out_threshold=5, accounts="open")  # users here have no accounts
IDS = IdGenerator(0)
CMIDS = itertools.count()


class Pushes:
    """A push plugin that remembers what it was handed, batch by batch."""

    def __init__(self) -> None:
        self.batches: list[list[OfflinePush]] = []

    @hookimpl
    async def imflow_offline_push(self, pushes: list[OfflinePush], context: AgentContext) -> None:
        self.batches.append(list(pushes))

    def seen(self) -> list[tuple[str, int, int, bool]]:
        """(user, seq, total, mentions) of every push so far, in order."""
        return [(p.user, p.message.seq, p.total, p.mentions) for batch in self.batches for p in batch]


def send(sender: str, conversation: str, body: dict | None = None, cmid: str | None = None) -> tuple[SendCommand, int]:
    command = SendCommand(
        sender=sender, client_msg_id=cmid or f"c{next(CMIDS)}", conversation=conversation,
        body=body or {"text": "hi"}, sent_at_ms=1, gateway="gw-a", origin="conn-1",
    )
    return command, 0


def context(redis, plugin: Pushes) -> AgentContext:
    manager = empty_manager()
    manager.register(plugin, name="pushes")
    return AgentContext(settings=SETTINGS, redis=redis, producer=None, hooks=Hooks(manager), generators={0: IDS})


async def group(redis, gid: str, owner: str, members: list[str]) -> str:
    await groups.create(Services(SETTINGS, redis), groups.CreateGroup(owner, "g", tuple(members), gid=gid))
    return f"g:{gid}"


async def test_offline_receivers_get_one_push_with_their_total_and_online_ones_none(any_redis) -> None:
    plugin = Pushes()
    ctx = context(any_redis, plugin)
    await presence.connected(any_redis, "carol", "gw-b")
    batch = [send("alice", "p:alice:bob"), send("alice", "p:alice:bob"), send("alice", "p:alice:carol")]
    await handle_sends(ctx, batch)
    # bob is offline: both messages, his total rising; carol is online, alice sent them
    assert plugin.seen() == [("bob", 1, 1, False), ("bob", 2, 2, False)]
    assert len(plugin.batches) == 1, "one hook call per batch of the ingest agent"
    await handle_sends(ctx, batch)  # Kafka delivers the batch again
    assert len(plugin.batches) == 1, "a replay pushes nothing again"


async def test_muted_conversations_are_left_out(any_redis) -> None:
    plugin = Pushes()
    services = Services(SETTINGS, any_redis)
    await conversation_settings.set_conversation(
        services, conversation_settings.SetConversation("bob", "p:alice:bob", muted=True)
    )
    await handle_sends(context(any_redis, plugin), [send("alice", "p:alice:bob"), send("alice", "p:alice:dave")])
    assert plugin.seen() == [("dave", 1, 1, False)]


async def test_write_fan_out_groups_push_every_offline_member_saying_who_is_mentioned(any_redis) -> None:
    plugin = Pushes()
    conversation = await group(any_redis, "small", "ann", ["ben", "cat", "dan"])
    await presence.connected(any_redis, "dan", "gw-b")
    body = {"text": "@ben look", "mentions": ["ben"]}
    await handle_sends(context(any_redis, plugin), [send("ann", conversation, body)])
    assert sorted(plugin.seen()) == [("ben", 1, 1, True), ("cat", 1, 1, False)]


async def test_read_fan_out_groups_push_only_mentioned_offline_members(any_redis) -> None:
    plugin = Pushes()
    members = [f"m{i}" for i in range(8)]
    conversation = await group(any_redis, "big", "ann", members)
    await presence.connected(any_redis, "m1", "gw-b")
    ctx = context(any_redis, plugin)
    await handle_sends(ctx, [send("ann", conversation, {"text": "nobody named"})])
    assert plugin.seen() == [], "read fan-out: the others' counts wait for their next sync"
    named = send("ann", conversation, {"text": "@m0 @m1", "mentions": ["m0", "m1"]})
    await handle_sends(ctx, [named])
    # m0 offline, brought up to the message: total 2; m1 is connected
    assert plugin.seen() == [("m0", 2, 2, True)]
    everyone = send("ann", conversation, {"text": "@all", "mention_all": True})
    await handle_sends(ctx, [everyone])
    pushed = sorted(plugin.seen()[1:])
    assert [user for user, *_ in pushed] == ["m0", *members[2:]], "every offline member but the sender"
    assert all(mentions for *_, mentions in pushed)
    # @all wrote one record on the conversation, none per member
    assert [int(seq) for seq in await any_redis.zrange(keys.mention_all(conversation), 0, -1)] == [3]
    assert not await any_redis.exists(keys.mentions("m5"))
    await handle_sends(ctx, [named, everyone])  # a replay
    assert len(plugin.seen()) == 1 + len(pushed)



async def test_read_fan_out_offline_work_comes_after_the_acks_and_pushes(any_redis, monkeypatch) -> None:
    """An @all in a read fan-out group lists every member and reads their totals for the push
    plugins: none of that may hold back the batch's 'sent' ACK and pushes (published first)."""
    from imflow.core import sending
    from imflow.core.storage import gateway_events

    order: list[str] = []
    publish, offline_of = gateway_events.publish, sending._read_fan_out_offline

    async def publishing(redis, batch):
        order.append("publish")
        return await publish(redis, batch)

    async def working_out(ctx, message, *args):
        order.append(f"offline {message.seq}")
        return await offline_of(ctx, message, *args)

    monkeypatch.setattr(sending.gateway_events, "publish", publishing)
    monkeypatch.setattr(sending, "_read_fan_out_offline", working_out)
    plugin = Pushes()
    conversation = await group(any_redis, "big2", "ann", [f"m{i}" for i in range(8)])
    await presence.connected(any_redis, "m1", "gw-b")
    batch = [send("ann", conversation, {"text": "@all", "mention_all": True}), send("ann", conversation, {"text": "@m0", "mentions": ["m0"]})]
    await handle_sends(context(any_redis, plugin), batch)
    assert order == ["publish", "offline 1", "offline 2"], "ACKs and pushes first, then the offline work"
    pushed = sorted(user for user, seq, _, _ in plugin.seen() if seq == 1)
    assert pushed == ["m0", *[f"m{i}" for i in range(2, 8)]], "the @all still reaches every offline member"
    assert [(user, seq) for user, seq, _, _ in plugin.seen() if seq == 2] == [("m0", 2)]
