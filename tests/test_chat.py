"""One-to-one chat end to end over the WebSocket protocol, on both stacks."""

from __future__ import annotations

import asyncio

from imflow.client import ClientError
from imflow.core.models import direct_conversation
from imflow.testing import UNCHANGED_SETTINGS, eventually

from stacks import connect


async def test_message_reaches_receiver_with_ack_and_unread(stack, users) -> None:
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob, gateway=1) as bob:
        sent = await alice.send_text(users.bob, "hello bob")
        conversation = direct_conversation(users.alice, users.bob)
        assert sent["conversation"] == conversation and sent["seq"] == 1 and sent["mid"] > 0

        push = await bob.next_message()
        assert push["message"]["body"] == {"text": "hello bob"}
        assert push["message"]["mid"] == sent["mid"] and push["message"]["sender"] == users.alice
        assert push["unread"] == {"conversation": conversation, "count": 1, "total": 1}

        reply = await bob.sync()
        # alice has read what she sent: her read seq is bob's peer_read_seq
        state = {"conversation": conversation, "last_seq": 1, "read_seq": 0, "unread": 1, **UNCHANGED_SETTINGS, "peer_read_seq": 1}
        assert reply["conversations"] == [state]
        assert reply["total_unread"] == 1
        # the sender has read what it sent: no unread on its side
        assert (await alice.sync())["total_unread"] == 0


async def test_resend_with_same_cmid_is_stored_once(stack, users) -> None:
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob) as bob:
        first = await alice.send_text(users.bob, "once", cmid="fixed-id")
        again = await alice.send_text(users.bob, "once (resent)", cmid="fixed-id")
        assert (again["mid"], again["seq"]) == (first["mid"], first["seq"])
        second = await alice.send_text(users.bob, "next")
        assert second["seq"] == first["seq"] + 1, "seqs stay gap-free after a duplicate"
        page = await bob.history(direct_conversation(users.alice, users.bob))
        assert [m["body"]["text"] for m in page["messages"]] == ["next", "once"]


async def test_every_device_of_a_user_gets_every_message(stack, users) -> None:
    async with (
        await connect(stack, users.alice) as alice,
        await connect(stack, users.bob, gateway=0) as phone,
        await connect(stack, users.bob, gateway=1) as laptop,
        await connect(stack, users.alice, gateway=1) as alice_laptop,
    ):
        sent = [await alice.send_text(users.bob, f"m{i}") for i in range(5)]
        for device in (phone, laptop):
            got = [(await device.next_message())["message"]["mid"] for _ in range(5)]
            assert got == [s["mid"] for s in sent]
        # the sender's other device sees what the sender sent
        got = [(await alice_laptop.next_message())["message"]["mid"] for _ in range(5)]
        assert got == [s["mid"] for s in sent]


async def test_offline_messages_sync_newest_first_then_older_pages(stack, users) -> None:
    async with await connect(stack, users.alice) as alice:
        sent = [await alice.send_text(users.bob, f"offline {i}") for i in range(230)]
    async with await connect(stack, users.bob) as bob:
        pages, before = [], None
        while True:
            reply = await bob.sync(before_mid=before, limit=100)
            pages.append(reply["messages"])
            before = reply["next_before_mid"]
            if before is None:
                break
        assert [len(page) for page in pages] == [100, 100, 30]
        mids = [m["mid"] for page in pages for m in page]
        assert mids == sorted((s["mid"] for s in sent), reverse=True), "newest first, nothing missing"
        # ACK removes them from the inbox (the offline queue); history still has them
        for page in pages:
            await bob.ack([m["mid"] for m in page])
        assert (await bob.sync())["messages"] == []
        assert (await bob.sync())["total_unread"] == 230


async def test_read_report_lowers_unread_and_reaches_other_devices(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with (
        await connect(stack, users.alice) as alice,
        await connect(stack, users.bob, gateway=0) as phone,
        await connect(stack, users.bob, gateway=1) as laptop,
    ):
        for i in range(4):
            await alice.send_text(users.bob, f"m{i}")
        reply = await phone.read(conversation, 3)
        assert (reply["count"], reply["total"], reply["read_seq"]) == (1, 1, 3)
        update = await laptop.next_message(op="unread")
        assert update["count"] == 1 and update["total"] == 1
        # reading again, or reading backwards, changes nothing
        assert (await phone.read(conversation, 2))["count"] == 1
        assert (await phone.read(conversation, 10**9))["count"] == 0


async def test_history_pages_back_through_redis_and_the_archive(stack, users) -> None:
    """The stack keeps 50 messages per conversation in Redis; older pages come from the archive."""
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice:
        for i in range(120):
            await alice.send_text(users.bob, f"h{i}")
    async with await connect(stack, users.bob) as bob:

        async def all_pages() -> list[int] | None:
            seqs, before = [], None
            while True:
                page = await bob.history(conversation, before_seq=before, limit=40)
                seqs += [m["seq"] for m in page["messages"]]
                before = page["next_before_seq"]
                if before is None:
                    return seqs if seqs == list(range(120, 0, -1)) else None

        await eventually(all_pages, timeout=30, interval=0.3)  # the archive seals within a second


async def test_delete_for_me_hides_one_side_only(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob) as bob:
        keep = await alice.send_text(users.bob, "keep")
        gone = await alice.send_text(users.bob, "delete me")
        assert (await bob.delete(conversation, gone["mid"]))["op"] == "deleted"
        assert [m["mid"] for m in (await bob.history(conversation))["messages"]] == [keep["mid"]]
        assert [m["mid"] for m in (await alice.history(conversation))["messages"]] == [gone["mid"], keep["mid"]]


async def test_non_members_get_not_found_on_history(stack, users) -> None:
    async with await connect(stack, users.alice) as alice, await connect(stack, users.mallory) as mallory:
        await alice.send_text(users.bob, "private")
        conversation = direct_conversation(users.alice, users.bob)
        for call in (mallory.history(conversation), mallory.read(conversation, 1), mallory.delete(conversation, 1)):
            try:
                await call
            except ClientError as error:
                assert error.code == "not_found"
            else:
                raise AssertionError("a non-member was answered")
    stack.assert_alive()


async def test_ping(stack, users) -> None:
    async with await connect(stack, users.alice) as alice:
        assert (await alice.ping())["op"] == "pong"
        await asyncio.sleep(0)
