"""Read receipts (docs/protocol.md, "Read receipts") on both stacks over the WebSocket protocol:
the one-to-one ``receipt`` push and ``peer_read_seq``, the ``receipts`` and ``readers``
operations, and every refusal (each changing nothing)."""

from __future__ import annotations

import duckdb
import pytest

from imflow.core import receipts
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.models import direct_conversation
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import keys

from stacks import READ_FAN_OUT_THRESHOLD, connect, refused


async def test_a_read_that_moves_tells_the_other_side(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with (
        await connect(stack, users.alice) as alice,
        await connect(stack, users.alice, gateway=1) as alice_laptop,
        await connect(stack, users.bob) as bob,
    ):
        for i in range(3):
            await alice.send_text(users.bob, f"m{i}")
        await bob.read(conversation, 1)
        await bob.read(conversation, 1)  # moves nothing: no receipt
        await bob.read(conversation, 0)
        await bob.read(conversation, 3)
        for device in (alice, alice_laptop):
            got = [await device.next_message(op="receipt") for _ in range(2)]
            assert [(r["conversation"], r["user"], r["read_seq"]) for r in got] == [(conversation, users.bob, 1), (conversation, users.bob, 3)]
        with pytest.raises(TimeoutError):  # bob's own devices get 'unread', not 'receipt'
            await bob.next_message(op="receipt", timeout=0.5)
        state = (await alice.sync())["conversations"][0]
        assert state["peer_read_seq"] == 3
        assert "peer_read_seq" in (await bob.sync())["conversations"][0], "alice has read what she sent"
        reply = await alice.request({"op": "receipts", "conversation": conversation, "seqs": [1, 2, 3]})
        assert reply["receipts"] == [{"seq": s, "read": 1, "members": 1} for s in (1, 2, 3)]
        reply = await alice.request({"op": "readers", "conversation": conversation, "seq": 2})
        assert (reply["read"], reply["unread"], reply["seq"]) == ([users.bob], [], 2)


async def test_group_receipts_count_the_members_who_could_see_it(stack, users) -> None:
    async with (
        await connect(stack, users.ann) as ann,
        await connect(stack, users.ben) as ben,
        await connect(stack, users.dan) as dan,
    ):
        created = await ann.request({"op": "create_group", "name": "trio", "members": [users.ben, users.cat]})
        group = created["conversation"]
        for i in range(3):
            await ann.send({"conversation": group, "body": {"text": f"m{i}"}})
        await ben.send({"conversation": group, "body": {"text": "ben's"}})  # seq 4: ben has read 1..4
        await ann.request({"op": "add_members", "gid": created["gid"], "users": [users.dan]})
        await ann.send({"conversation": group, "body": {"text": "after dan"}})  # seq 5
        reply = await ann.request({"op": "receipts", "conversation": group, "seqs": [1, 4, 5]})
        assert reply["receipts"] == [
            {"seq": 1, "read": 1, "members": 2},  # ben and cat; dan joined later
            {"seq": 4, "read": 1, "members": 2},  # ann (read by sending after it) and cat, not ben its sender
            {"seq": 5, "read": 0, "members": 3},  # ben, cat, dan
        ]
        readers = await ben.request({"op": "readers", "conversation": group, "seq": 5})
        assert (readers["read"], readers["unread"]) == ([], sorted([users.ben, users.cat, users.dan]))
        await dan.read(group, 5)
        readers = await ben.request({"op": "readers", "conversation": group, "seq": 5})
        assert readers["read"] == [users.dan]
        # dan sees from his joining on: seqs before it are not his to ask about
        await refused(dan.request({"op": "receipts", "conversation": group, "seqs": [3, 5]}), "not_found")


async def test_refusals_change_nothing(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice, await connect(stack, users.eve) as eve:
        await alice.send_text(users.bob, "hi")
        await refused(eve.request({"op": "receipts", "conversation": conversation, "seqs": [1]}), "not_found")  # not hers
        await refused(eve.request({"op": "readers", "conversation": conversation, "seq": 1}), "not_found")
        await refused(alice.request({"op": "receipts", "conversation": conversation, "seqs": [2]}), "not_found")  # no such seq
        await refused(alice.request({"op": "readers", "conversation": conversation, "seq": 9}), "not_found")
        for bad in ({"seqs": []}, {"seqs": list(range(1, 102))}, {"seqs": [0]}, {"seqs": ["1"]}, {}):
            await refused(alice.request({"op": "receipts", "conversation": conversation, **bad}), "bad_frame")
        await refused(alice.request({"op": "readers", "conversation": conversation, "seq": 0}), "bad_frame")
        await refused(alice.request({"op": "readers", "conversation": "p:zed:alice", "seq": 1}), "bad_frame")
        big = [getattr(users, f"m{i}") for i in range(READ_FAN_OUT_THRESHOLD)]
        group = (await alice.request({"op": "create_group", "name": "big", "members": big}))["conversation"]
        await alice.send({"conversation": group, "body": {"text": "to many"}})
        await refused(alice.request({"op": "receipts", "conversation": group, "seqs": [1]}), "receipts_unavailable")
        await refused(alice.request({"op": "readers", "conversation": group, "seq": 1}), "receipts_unavailable")
        await refused(eve.request({"op": "readers", "conversation": group, "seq": 1}), "not_found")
        # nothing moved: alice's view is as before, and a read still works
        state = {s["conversation"]: s for s in (await alice.sync())["conversations"]}[conversation]
        assert (state["unread"], state["read_seq"]) == (0, 1) and "peer_read_seq" not in state


# -- messages older than the Redis log: the archive's, asked once per frame (the core)


class CountingArchive:
    """An archive reader over an in-memory DuckDB table of message contents, counting queries."""

    def __init__(self, conversation: str, senders: dict[int, str]) -> None:
        self.db = duckdb.connect()
        self.db.execute("CREATE TABLE im_msg_content (conversation VARCHAR, seq BIGINT, sender VARCHAR)")
        self.db.executemany("INSERT INTO im_msg_content VALUES (?, ?, ?)", [(conversation, s, u) for s, u in senders.items()])
        self.queries = 0

    def cursor(self) -> duckdb.DuckDBPyConnection:
        self.queries += 1
        return self.db.cursor()


async def test_archived_seqs_cost_one_query_and_seqs_above_the_last_none(any_redis) -> None:
    conversation = direct_conversation("alice", "bob")
    # 150 messages, all archived and gone from the Redis log; bob has read up to 60
    archive = CountingArchive(conversation, {seq: ("alice" if seq % 2 else "bob") for seq in range(1, 151)})
    await any_redis.set(keys.conversation_seq(conversation), 150)
    await any_redis.hset(keys.read_seq("bob"), conversation, 60)
    await any_redis.hset(keys.read_seq("alice"), conversation, 150)
    services = Services(Settings(accounts="open"), any_redis, archive=archive)  # type: ignore[arg-type]
    asked = list(range(1, 101))
    got = await receipts.receipts(services, receipts.AskReceipts("alice", conversation, tuple(asked)))
    assert archive.queries == 1, "one archive query for a hundred seqs"
    assert got.receipts == [{"seq": s, "read": int(s <= 60 if s % 2 else 1), "members": 1} for s in asked]
    for seqs in ((3, 151), (151,), (2, 10**9)):  # above the last seq: refused before the archive is asked
        with pytest.raises(ImflowError) as refusal:
            await receipts.receipts(services, receipts.AskReceipts("alice", conversation, seqs))
        assert refusal.value.code == ErrorCode.NOT_FOUND
    assert archive.queries == 1
    await any_redis.set(keys.conversation_seq(conversation), 160)  # 151-160 neither in the log nor archived
    with pytest.raises(ImflowError) as refusal:
        await receipts.readers(services, receipts.AskReaders("bob", conversation, 155))
    assert refusal.value.code == ErrorCode.NOT_FOUND and archive.queries == 2
    read = await receipts.readers(services, receipts.AskReaders("bob", conversation, 61))
    assert (read.read, read.unread) == ([], ["bob"])
