"""Delivery and unread counts in Redis (core functions, no broker): atomic, idempotent, rebuildable."""

from __future__ import annotations

import asyncio
import random

import orjson
import pytest

from imflow.core.storage import keys
from imflow.core.storage.inbox import acknowledge, conversation_states, deliver, inbox_page, mark_read
from imflow.core.models import Message
from imflow.core.storage.repair import repair_user, users_with_state


def message(conversation: str, seq: int, sender: str) -> Message:
    return Message(
        mid=1_000_000 + seq * 100 + hash(conversation) % 50,
        seq=seq,
        conversation=conversation,
        sender=sender,
        client_msg_id=f"{conversation}-{seq}",
        body={"text": str(seq)},
        sent_at_ms=seq,
    )


async def test_a_replayed_delivery_counts_once(any_redis) -> None:
    m = message("p:alice:bob", 1, "alice")
    first, unread = await deliver(any_redis, m, "bob", 1000)
    again, unread_again = await deliver(any_redis, m, "bob", 1000)  # Kafka redelivered the record
    assert (first, again) == (True, False)
    assert unread.count == unread_again.count == 1
    assert unread.total == unread_again.total == 1
    assert await any_redis.zcard(keys.inbox("bob")) == 1


async def test_total_and_conversation_counts_move_together(any_redis) -> None:
    for seq in range(1, 4):
        await deliver(any_redis, message("p:alice:bob", seq, "alice"), "bob", 1000)
    for seq in range(1, 3):
        await deliver(any_redis, message("p:bob:carol", seq, "carol"), "bob", 1000)
    states, total = await conversation_states(any_redis, "bob")
    assert {s["conversation"]: s["unread"] for s in states} == {"p:alice:bob": 3, "p:bob:carol": 2}
    assert total == 5
    after = await mark_read(any_redis, "bob", "p:alice:bob", 2)
    assert (after.count, after.total, after.read_seq) == (1, 3, 2)
    # late, repeated and too-far read reports are harmless
    assert (await mark_read(any_redis, "bob", "p:alice:bob", 1)).count == 1
    assert (await mark_read(any_redis, "bob", "p:alice:bob", 2)).total == 3
    assert (await mark_read(any_redis, "bob", "p:alice:bob", 99)).read_seq == 3


async def test_sending_marks_the_conversation_read_for_the_sender(any_redis) -> None:
    await deliver(any_redis, message("p:alice:bob", 1, "bob"), "alice", 1000)
    await deliver(any_redis, message("p:alice:bob", 2, "bob"), "alice", 1000)
    _, unread = await deliver(any_redis, message("p:alice:bob", 3, "alice"), "alice", 1000)
    assert (unread.count, unread.total) == (0, 0)


async def test_inbox_keeps_the_newest_and_acks_remove(any_redis) -> None:
    for seq in range(1, 21):
        await deliver(any_redis, message("p:alice:bob", seq, "alice"), "bob", 10)
    fragments, cursor, mids = await inbox_page(any_redis, "bob", None, 100)
    page = orjson.loads(orjson.dumps(fragments))
    assert [m["seq"] for m in page] == list(range(20, 10, -1)) and cursor is None
    assert mids == [m["mid"] for m in page]
    older, cursor, _ = await inbox_page(any_redis, "bob", None, 4)
    assert cursor == orjson.loads(orjson.dumps(older))[-1]["mid"]
    assert await acknowledge(any_redis, "bob", [page[0]["mid"], page[1]["mid"], 12345]) == 2
    # unread counts are about the conversation, not the inbox: trimming and ACKs leave them
    _, total = await conversation_states(any_redis, "bob")
    assert total == 20


async def test_repair_rebuilds_counts_from_seqs_and_read_positions(any_redis) -> None:
    rng = random.Random(5)
    for user in ("bob", "carol"):
        for seq in range(1, rng.randrange(5, 30)):
            await deliver(any_redis, message(f"p:alice:{user}", seq, "alice"), user, 1000)
        await mark_read(any_redis, user, f"p:alice:{user}", 3)
    truth = {user: (await conversation_states(any_redis, user))[1] for user in ("bob", "carol")}
    # break them: a lost update, a double increment
    await any_redis.hset(keys.unread("bob"), "p:alice:bob", 999)
    await any_redis.incrby(keys.unread_total("carol"), 7)
    found = sorted([user async for user in users_with_state(any_redis)])
    assert found == ["bob", "carol"]
    for user in found:
        await repair_user(any_redis, user)
    for user in found:
        states, total = await conversation_states(any_redis, user)
        assert total == truth[user] == sum(s["last_seq"] - s["read_seq"] for s in states)
    assert (await repair_user(any_redis, "bob")).conversations_fixed == 0  # nothing left to fix


@pytest.mark.redis
async def test_repair_command_fixes_broken_counts_on_the_real_server(real_redis, redis_url) -> None:
    from typer.testing import CliRunner

    from imflow.cli import cli

    for seq in range(1, 8):
        await deliver(real_redis, message("p:alice:bob", seq, "alice"), "bob", 1000)
    await real_redis.hset(keys.unread("bob"), "p:alice:bob", 42)
    await real_redis.set(keys.unread_total("bob"), 42)
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["repair", "unread", "--redis", redis_url])
    assert result.exit_code == 0, result.output
    assert "bob: total 42 -> 7" in result.output and "checked 1 user(s); fixed 1" in result.output
    states, total = await conversation_states(real_redis, "bob")
    assert states[0]["unread"] == 7 and total == 7
