"""What the protocol model (tests/test_model.py) found, each shrunk example kept as a test of its own.

Both stacks, with the model's settings: the Redis conversation log keeps 5 messages, so history
pages cross into the archive, which seals every 0.2 s.
"""

from __future__ import annotations

import asyncio
import time

from test_model import LOG_LIMIT, STACK_EXTRA_ENV as MODEL_ENV, Device

# the model's stack, but with open accounts: these tests sign in fresh users without registering
# them, and windows of a second for recall and edit, which the model test keeps long
WINDOW_S = 1
STACK_EXTRA_ENV = {
    **MODEL_ENV, "IMFLOW_ACCOUNTS": "open",
    "IMFLOW_RECALL_EDIT_RECALL_WINDOW_SECONDS": str(WINDOW_S), "IMFLOW_RECALL_EDIT_EDIT_WINDOW_SECONDS": str(WINDOW_S),
}

from imflow.client import Client
from imflow.core.storage import lake
from imflow.core.storage.archive import DELETIONS
from imflow.testing import eventually

from stacks import READ_FAN_OUT_THRESHOLD


async def connect(stack, user: str, gateway: int = 0) -> Client:
    return await Client.connect(stack.url(gateway), stack.token(user))


async def send_many(client: Client, conversation: str, count: int) -> list[dict]:
    return [await client.send({"conversation": conversation, "body": {"text": f"m{i}"}}) for i in range(count)]


async def archived(client: Client, conversation: str, seqs: list[int]) -> None:
    """Wait until history shows these seqs, which the Redis log no longer holds (the archive sealed them)."""

    async def shown():
        page = await client.history(conversation, before_seq=max(seqs) + 1, limit=len(seqs))
        return [m["seq"] for m in page["messages"]] == sorted(seqs, reverse=True)

    await eventually(shown, timeout=30)


async def test_history_before_seq_0_is_an_empty_page(stack, users) -> None:
    # was: the newest messages from the archive (0 was read as "no cursor")
    async with await connect(stack, users.alice) as alice:
        conversation = (await send_many(alice, f"p:{users.alice}:{users.bob}", 2))[0]["conversation"]
        await archived(alice, conversation, [1, 2])
        for before in (0, 1):
            page = await alice.history(conversation, before_seq=before, limit=3)
            assert (page["messages"], page["next_before_seq"]) == ([], None), page


async def test_a_deletion_hides_the_same_messages_before_and_after_the_archive_seals_it(stack, users) -> None:
    # was: once the archive had sealed the deletion, a page reached one message further back
    async with await connect(stack, users.alice) as alice:
        sent = await send_many(alice, f"p:{users.alice}:{users.bob}", LOG_LIMIT + 3)
        conversation = sent[0]["conversation"]
        await archived(alice, conversation, [1, 2, 3])
        config = stack.lake_config()

        def deletions() -> int:  # the archive's rows of this deletion (it has the only one of the test's users)
            with lake.connect(config) as db:
                sql = f"SELECT count(*) FROM {DELETIONS} WHERE owner_uid = $owner"
                found = db.execute(sql, {"owner": users.alice}).fetchone()
            return found[0] if found else 0

        assert deletions() == 0
        await alice.delete(conversation, sent[1]["mid"])  # seq 2, in the archive only
        page = await alice.history(conversation, before_seq=4, limit=2)
        assert ([m["seq"] for m in page["messages"]], page["next_before_seq"]) == ([3], 2)

        async def deletion_sealed() -> bool:
            return await asyncio.to_thread(deletions) > 0

        await eventually(deletion_sealed)
        page = await alice.history(conversation, before_seq=4, limit=2)
        assert ([m["seq"] for m in page["messages"]], page["next_before_seq"]) == ([3], 2), page


async def test_sync_leaves_out_what_you_deleted_in_a_read_fan_out_group(stack, users) -> None:
    # was: the first sync page brought the deleted message back (read fan-out messages are in no
    # inbox, so the delete removed nothing there)
    members = [getattr(users, f"m{i}") for i in range(READ_FAN_OUT_THRESHOLD)]
    async with await connect(stack, users.owner) as owner, await connect(stack, members[0]) as reader:
        group = await owner.request({"op": "create_group", "name": "big", "members": members})
        first, second = await send_many(owner, group["conversation"], 2)
        assert (await reader.delete(group["conversation"], first["mid"]))["op"] == "deleted"
        page = await reader.sync()
        assert [m["mid"] for m in page["messages"]] == [second["mid"]], page
        assert page["conversations"][0]["unread"] == 2, "a delete hides, it does not read"


def test_sent_answers_only_the_connection_that_sent(stack, users) -> None:
    # was: every connection of the sender on the sending gateway got the 'sent' frame
    phone, laptop = (Device(stack.url(0), stack.token(users.alice), name) for name in ("phone", "laptop"))
    try:
        sent = phone.send({"cmid": "c1", "to": users.bob, "body": {"text": "hi"}})
        assert sent["op"] == "sent", sent
        laptop.wait(lambda: any(p.get("op") == "msg" for p in laptop.pushes), "no msg push on the other device")
        # the 'sent' and the push left in one publish, the 'sent' first: it would be here by now
        assert [p["op"] for p in laptop.snapshot()] == ["msg"], laptop.snapshot()
    finally:
        phone.close()
        laptop.close()


def test_a_one_to_one_id_written_unsorted_is_refused(stack, users) -> None:
    # was: 'p:bob:alice' was accepted as a second conversation of alice and bob, with seqs of its own
    alice = Device(stack.url(0), stack.token(users.alice), "alice")
    try:
        low, high = sorted((users.alice, users.bob))
        for frame in ({"op": "history", "conversation": f"p:{high}:{low}"}, {"op": "read", "conversation": f"p:{high}:{low}", "seq": 1}):
            reply = alice.request(frame)
            assert (reply["op"], reply.get("code")) == ("error", "bad_frame"), reply
        reply = alice.send({"cmid": "c1", "conversation": f"p:{high}:{low}", "body": {"text": "hi"}})
        assert (reply["op"], reply.get("code")) == ("error", "bad_frame"), reply
        assert alice.send({"cmid": "c2", "to": users.bob, "body": {"text": "hi"}})["seq"] == 1
    finally:
        alice.close()


async def test_history_has_every_sent_message_while_the_archive_is_sealing(stack, users) -> None:
    # was: messages the Redis log had dropped (it keeps the newest 5) but the archive had not
    # sealed yet were missing from history for a moment, though 'sent' had said they were stored
    async with await connect(stack, users.alice) as alice:
        sent = await send_many(alice, f"p:{users.alice}:{users.bob}", 3 * LOG_LIMIT)
        page = await alice.history(sent[0]["conversation"], limit=50)
        assert [m["seq"] for m in page["messages"]] == list(range(3 * LOG_LIMIT, 0, -1)), page


def test_after_the_window_the_sender_may_not_recall_or_edit_but_a_group_owner_recalls(stack, users) -> None:
    # message.too_late, which the model test (windows of an hour) never reaches: refused, nothing
    # changes and nobody is told; the owner of a group still recalls the same sender's message
    phone, laptop = (Device(stack.url(g), stack.token(users.alice), name) for g, name in ((0, "phone"), (1, "laptop")))
    owner = Device(stack.url(0), stack.token(users.bob), "bob")
    try:
        group = owner.request({"op": "create_group", "name": "g", "members": [users.alice]})
        direct = phone.send({"cmid": "c1", "to": users.bob, "body": {"text": "one"}})
        in_group = phone.send({"cmid": "c2", "conversation": group["conversation"], "body": {"text": "two"}})
        targets = [(direct["conversation"], direct["seq"]), (in_group["conversation"], in_group["seq"])]
        sent_at = [phone.request({"op": "history", "conversation": c})["messages"][0]["sent_at_ms"] for c, _ in targets]
        laptop.wait(lambda: len(laptop.pushes) == 2, "the laptop did not get both messages")
        owner.wait(lambda: len(owner.pushes) == 2, "bob did not get both messages")
        while time.time() * 1000 <= max(sent_at) + WINDOW_S * 1000 + 50:  # the server's clock is this machine's
            time.sleep(0.05)
        for conversation, seq in targets:
            for frame in ({"op": "message.recall"}, {"op": "message.edit", "body": {"text": "changed"}}):
                reply = phone.request({**frame, "conversation": conversation, "seq": seq})
                assert (reply["op"], reply.get("code")) == ("error", "message.too_late"), (frame, reply)
        before = [phone.request({"op": "history", "conversation": c})["messages"] for c, _ in targets]
        assert [page[0]["body"] for page in before] == [{"text": "one"}, {"text": "two"}], before
        recalled = owner.request({"op": "message.recall", "conversation": in_group["conversation"], "seq": in_group["seq"]})
        assert recalled["op"] == "message.recall" and recalled["message"]["recalled_by"] == users.bob, recalled
        # the first push after the messages is the owner's recall: the refused requests told nobody
        laptop.wait(lambda: len(laptop.pushes) >= 3, "no recalled push on the laptop")
        assert [p["op"] for p in laptop.snapshot()] == ["msg", "msg", "recalled"], laptop.snapshot()
        assert laptop.snapshot()[2]["by"] == users.bob, laptop.snapshot()
        assert phone.request({"op": "history", "conversation": direct["conversation"]})["messages"] == before[0]
    finally:
        for device in (phone, laptop, owner):
            device.close()
