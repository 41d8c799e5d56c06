"""Recall and edit (the ``recall_edit`` plugin over core/amending.py): end to end on both stacks,
the unread rule as a property against real Redis, and the archive's readers."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imflow.analytics import Archive
from imflow.client import Client
from imflow.core.models import direct_conversation
from imflow.core.storage import keys, redis_client
from imflow.core.storage.archive import ArchiveReader, VERSIONS, write_records
from imflow.core.storage.lake import LakeConfig, connect as lake_connect
from imflow.core.storage.scripts import lua_source
from imflow.plugins.recall_edit import RecallEdit
from imflow.testing import eventually

from stacks import READ_FAN_OUT_THRESHOLD, connect, refused

# history pages cross into the archive after 5 sealed messages (the archive seals every 0.2 s)
LOG_LIMIT = 5
STACK_EXTRA_ENV = {"IMFLOW_CONVERSATION_LOG_LIMIT": str(LOG_LIMIT)}


class Pushes:
    """A client's pushes by op, none dropped (``Client.next_message`` drops other ops' pushes)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.kept: list[dict[str, Any]] = []

    async def next(self, op: str, timeout: float = 10.0) -> dict[str, Any]:
        for index, frame in enumerate(self.kept):
            if frame.get("op") == op:
                return self.kept.pop(index)
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.client.pushes.get()
                if frame.get("op") == op:
                    return frame
                self.kept.append(frame)

    async def until_message(self, mid: int) -> list[dict[str, Any]]:
        """Every push up to the ``msg`` push of ``mid`` (a marker sent after what must not be pushed)."""
        seen = []
        async with asyncio.timeout(10):
            while True:
                frame = self.kept.pop(0) if self.kept else await self.client.pushes.get()
                if frame.get("op") == "msg" and frame["message"]["mid"] == mid:
                    return seen
                seen.append(frame)


def text(client_frame: dict[str, Any]) -> Any:
    return client_frame["message"]["body"].get("text")


async def recall(client: Client, conversation: str, seq: int) -> dict[str, Any]:
    return (await client.request({"op": "message.recall", "conversation": conversation, "seq": seq}))["message"]


async def edit(client: Client, conversation: str, seq: int, new_text: str) -> dict[str, Any]:
    frame = {"op": "message.edit", "conversation": conversation, "seq": seq, "body": {"text": new_text}}
    return (await client.request(frame))["message"]


async def state_of(client: Client, conversation: str) -> tuple[int, int]:
    """(unread in the conversation, total) from the first sync page (read fan-out brought up to date)."""
    reply = await client.sync()
    found = [state["unread"] for state in reply["conversations"] if state["conversation"] == conversation]
    return (found[0] if found else 0), reply["total_unread"]


# -- one-to-one, both stacks


async def test_a_recall_leaves_a_tombstone_everywhere_and_drops_unread_once(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with (
        await connect(stack, users.alice) as alice,
        await connect(stack, users.alice, gateway=1) as alice_laptop,
        await connect(stack, users.bob, gateway=1) as bob,
    ):
        bob_pushes, laptop_pushes = Pushes(bob), Pushes(alice_laptop)
        kept = await alice.send_text(users.bob, "hello", cmid="keep")
        sent = await alice.send_text(users.bob, "wrong chat", cmid="oops")
        await bob_pushes.next("msg")
        await bob_pushes.next("msg")
        assert await state_of(bob, conversation) == (2, 2)

        tombstone = await recall(alice, conversation, sent["seq"])
        assert tombstone["body"] == {} and tombstone["recalled_by"] == users.alice
        assert (tombstone["mid"], tombstone["seq"], tombstone["sender"], tombstone["client_msg_id"], tombstone["type"]) == (
            sent["mid"], sent["seq"], users.alice, "oops", "text")
        assert tombstone["recalled_at_ms"] >= tombstone["sent_at_ms"] and "version" not in tombstone
        notice = {"op": "recalled", "conversation": conversation, "seq": sent["seq"], "mid": sent["mid"], "by": users.alice,
                  "at_ms": tombstone["recalled_at_ms"]}
        assert await bob_pushes.next("recalled") == notice
        assert await laptop_pushes.next("recalled") == notice, "the sender's other devices are told too"
        unread = await bob_pushes.next("unread")
        assert (unread["conversation"], unread["count"], unread["total"]) == (conversation, 1, 1)

        # the same everywhere it is stored: the inbox (sync), history, a replay of the send
        reply = await bob.sync()
        assert {m["mid"]: m for m in reply["messages"]}[sent["mid"]] == tombstone
        assert [s["unread"] for s in reply["conversations"]] == [1] and reply["total_unread"] == 1
        assert (await bob.history(conversation))["messages"] == [tombstone, *(
            m for m in (await alice.history(conversation))["messages"] if m["mid"] == kept["mid"])]
        again = await alice.send_text(users.bob, "wrong chat", cmid="oops")  # a resend of the recalled message
        assert (again["mid"], again["seq"]) == (sent["mid"], sent["seq"])
        assert (await bob.history(conversation))["messages"][0] == tombstone

        # a repeat: the tombstone, nothing changed, nobody told again
        assert await recall(alice, conversation, sent["seq"]) == tombstone
        marker = await alice.send_text(users.bob, "marker")
        before_marker = await bob_pushes.until_message(marker["mid"])
        assert not [f for f in before_marker if f["op"] in ("recalled", "unread")], before_marker
        assert await state_of(bob, conversation) == (2, 2), "the recalled message counted once: 3 sent, 1 recalled"
        assert await state_of(alice, conversation) == (0, 0), "the sender's own count never moves"


async def test_an_edit_makes_the_next_version_everywhere(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob, gateway=1) as bob:
        bob_pushes = Pushes(bob)
        sent = await alice.send_text(users.bob, "teh typo")
        await bob_pushes.next("msg")
        second = await edit(alice, conversation, sent["seq"], "the typo")
        assert (second["body"], second["version"], second["mid"]) == ({"text": "the typo"}, 2, sent["mid"])
        assert second["edited_at_ms"] >= second["sent_at_ms"]
        assert await bob_pushes.next("edited") == {"op": "edited", "message": second}

        # an edit to the body it has is a resend: the current version, no push
        assert await edit(alice, conversation, sent["seq"], "the typo") == second
        third = await edit(alice, conversation, sent["seq"], "the typo, fixed")
        assert third["version"] == 3
        marker = await alice.send_text(users.bob, "marker")
        edits = [f for f in await bob_pushes.until_message(marker["mid"]) if f["op"] == "edited"]
        assert edits == [{"op": "edited", "message": third}], "one push per change"

        reply = await bob.sync()
        assert {m["mid"]: m for m in reply["messages"]}[sent["mid"]] == third
        assert await state_of(bob, conversation) == (2, 2), "an edit moves no count"
        assert (await bob.history(conversation))["messages"][1] == third


async def test_every_refusal_changes_nothing(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with (
        await connect(stack, users.alice) as alice,
        await connect(stack, users.bob) as bob,
        await connect(stack, users.mallory) as mallory,
    ):
        sent = await alice.send_text(users.bob, "mine")
        packet = await alice.send({"to": users.bob, "type": "red_packet", "body": {"total_cents": 100, "count": 1}})
        gone = await alice.send_text(users.bob, "gone")
        await recall(alice, conversation, gone["seq"])
        before = (await bob.history(conversation))["messages"]
        counts = await state_of(bob, conversation)

        def ask(client: Client, op: str, **fields: Any):
            return client.request({"op": f"message.{op}", "conversation": conversation, **fields})

        await refused(ask(bob, "recall", seq=sent["seq"]), "message.not_yours")
        await refused(ask(bob, "edit", seq=sent["seq"], body={"text": "not yours"}), "message.not_yours")
        await refused(ask(alice, "edit", seq=packet["seq"], body={"text": "x"}), "message.not_text")
        await refused(ask(alice, "edit", seq=gone["seq"], body={"text": "back"}), "message.recalled")
        await refused(ask(mallory, "recall", seq=sent["seq"]), "not_found")
        await refused(ask(mallory, "edit", seq=sent["seq"], body={"text": "x"}), "not_found")
        await refused(ask(alice, "recall", seq=999), "not_found")
        await refused(ask(alice, "edit", seq=999, body={"text": "x"}), "not_found")
        for bad in ({"seq": "1"}, {"seq": 0}, {"seq": True}, {"seq": 1 << 60}, {}):
            await refused(ask(alice, "recall", **bad), "bad_frame")
        await refused(alice.request({"op": "message.recall", "seq": sent["seq"]}), "bad_frame")
        for body in ("text", {"text": ""}, {"text": "x", "extra": 1}, {"text": "x" * 4001}, None,
                     {"text": "@bob", "mentions": [users.bob]}):  # mentions: in groups only, as for a send
            await refused(ask(alice, "edit", seq=sent["seq"], body=body), "bad_frame")
        assert (await bob.history(conversation))["messages"] == before
        assert await state_of(bob, conversation) == counts


async def test_windows_close_for_the_sender_not_for_a_group_admin(imflow_server) -> None:
    """The windows, with the plugin's clock moved past them (the embedded server in the test)."""
    async with imflow_server() as server:
        plugin = server.node.hooks.manager.get_plugin("recall_edit")
        assert isinstance(plugin, RecallEdit)
        async with await server.client("alice") as alice, await server.client("bob") as bob:
            group = await alice.request({"op": "create_group", "name": "g", "members": ["bob"]})
            conversation = group["conversation"]
            first = await bob.send({"conversation": conversation, "body": {"text": "first"}})
            second = await bob.send({"conversation": conversation, "body": {"text": "second"}})
            real = plugin.clock
            plugin.clock = lambda: real() + plugin.settings.edit_window_seconds * 1000 + 1000
            before = (await bob.history(conversation))["messages"]
            await refused(bob.request({"op": "message.recall", "conversation": conversation, "seq": first["seq"]}),
                          "message.too_late")
            await refused(bob.request({"op": "message.edit", "conversation": conversation, "seq": first["seq"],
                                       "body": {"text": "late"}}), "message.too_late")
            assert (await bob.history(conversation))["messages"] == before
            # the owner recalls any member's message, any time
            assert (await recall(alice, conversation, first["seq"]))["recalled_by"] == "alice"
            # inside the recall window (two minutes) but past the edit window's end: only the edit is refused
            plugin.clock = lambda: real() + 60_000
            # an edit's mentions are checked as a send's
            for body, code in (({"text": "@zed", "mentions": ["zed"]}, "not_a_member"), ({"text": "@all", "mention_all": True}, "forbidden")):
                await refused(bob.request({"op": "message.edit", "conversation": conversation, "seq": second["seq"], "body": body}), code)
            mentioning = {"op": "message.edit", "conversation": conversation, "seq": second["seq"],
                          "body": {"text": "@alice", "mentions": ["alice"]}}
            assert (await bob.request(mentioning))["message"]["body"]["mentions"] == ["alice"]
            assert (await edit(bob, conversation, second["seq"], "still in time"))["version"] == 3
            plugin.clock = lambda: real() + plugin.settings.recall_window_seconds * 1000 + 1000
            await refused(bob.request({"op": "message.recall", "conversation": conversation, "seq": second["seq"]}),
                          "message.too_late")


# -- groups, write and read fan-out, both stacks


@pytest.mark.parametrize("size", [3, READ_FAN_OUT_THRESHOLD + 1], ids=["write-fan-out", "read-fan-out"])
async def test_a_recall_drops_unread_once_for_those_who_had_not_read_it(stack, users, size: int) -> None:
    names = [getattr(users, f"m{i}") for i in range(size)]  # m0 owns, m1 sends, m2 reads, the rest do not
    clients = [await connect(stack, name, gateway=i) for i, name in enumerate(names)]
    try:
        pushes = [Pushes(client) for client in clients]
        owner, sender, reader = clients[0], clients[1], clients[2]
        group = await owner.request({"op": "create_group", "name": "recalls", "members": names[1:]})
        conversation = group["conversation"]
        one = await sender.send({"conversation": conversation, "body": {"text": "one"}})
        two = await sender.send({"conversation": conversation, "body": {"text": "two"}})
        for index in range(size):
            if index != 1:
                await pushes[index].next("msg")
                await pushes[index].next("msg")
        await reader.read(conversation, two["seq"])
        # who synced before the recall and who did not (read fan-out: a count not flushed yet)
        assert await state_of(owner, conversation) == (2, 2)

        tombstone = await recall(sender, conversation, one["seq"])
        for index in range(size):
            if index != 1:  # the sender's connection has its reply
                assert (await pushes[index].next("recalled"))["mid"] == one["mid"]
        unread_push = await pushes[0].next("unread")
        assert (unread_push["count"], unread_push["total"]) == (1, 1)
        expected = {0: (1, 1), 1: (0, 0), 2: (0, 0)}
        for index, client in enumerate(clients):
            assert await state_of(client, conversation) == expected.get(index, (1, 1)), names[index]

        # a repeat (by the owner this time) and a second recall of the same message count nothing again
        assert (await recall(owner, conversation, one["seq"])) == tombstone
        for index, client in enumerate(clients):
            assert await state_of(client, conversation) == expected.get(index, (1, 1)), names[index]
        # the owner recalls the other member's second message: the last unread one goes
        await recall(owner, conversation, two["seq"])
        for index, client in enumerate(clients):
            assert await state_of(client, conversation) == (0, 0), names[index]
            page = await client.history(conversation)
            assert [m["body"] for m in page["messages"]] == [{}, {}]
        # sync carries the tombstones of the unread (inbox or, in read fan-out, the log's) messages
        reply = await clients[-1].sync()
        assert all(m["body"] == {} for m in reply["messages"] if m["conversation"] == conversation)
        assert {m["seq"] for m in reply["messages"] if m["conversation"] == conversation} == {1, 2}
        three = await sender.send({"conversation": conversation, "body": {"text": "three"}})
        assert await state_of(clients[-1], conversation) == (1, 1), "later messages count as ever"
        assert three["seq"] == 3
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize("size", [3, READ_FAN_OUT_THRESHOLD + 1], ids=["write-fan-out", "read-fan-out"])
async def test_a_recalled_mention_no_longer_counts(stack, users, size: int) -> None:
    names = [getattr(users, f"m{i}") for i in range(size)]  # m0 owns and is mentioned, m1 sends
    async with await connect(stack, names[0]) as owner, await connect(stack, names[1]) as sender:
        pushes = Pushes(owner)
        group = await owner.request({"op": "create_group", "name": "mentions", "members": names[1:]})
        conversation = group["conversation"]
        sent = [await sender.send({"conversation": conversation, "body": {"text": f"@m0 {i}", "mentions": [names[0]]}})
                for i in range(2)]
        for _ in sent:
            await pushes.next("msg")
        state = [s for s in (await owner.sync())["conversations"] if s["conversation"] == conversation][0]
        assert (state["unread"], state["mentions"]) == (2, 2)
        await recall(sender, conversation, sent[0]["seq"])
        unread = await pushes.next("unread")
        assert (unread["count"], unread["mentions"]) == (1, 1), unread
        await recall(sender, conversation, sent[1]["seq"])
        unread = await pushes.next("unread")
        assert unread["count"] == 0 and "mentions" not in unread, unread
        state = [s for s in (await owner.sync())["conversations"] if s["conversation"] == conversation][0]
        assert state["unread"] == 0 and "mentions" not in state


# -- the archive, both stacks


async def test_history_below_the_redis_log_shows_the_same(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob) as bob:
        sent = [await alice.send_text(users.bob, f"m{i}") for i in range(3)]
        await edit(alice, conversation, sent[0]["seq"], "m0, edited")
        edited = await edit(alice, conversation, sent[0]["seq"], "m0, edited twice")  # two changes, one flush apart at most
        tombstone = await recall(alice, conversation, sent[1]["seq"])
        above = (await bob.history(conversation))["messages"]
        assert above[1:] == [tombstone, edited]
        for i in range(LOG_LIMIT + 3):  # the log keeps 5 sealed messages: seqs 1-3 leave Redis
            await alice.send_text(users.bob, f"later {i}")

        # every page read until the archive holds it all (and, on the real stack, Redis no longer
        # does) must be the one above: an older version, once the newer one was answered, never
        seen: list[list[dict]] = []

        async def page() -> list[dict]:
            seen.append((await bob.history(conversation, before_seq=4, limit=3))["messages"])
            return seen[-1]

        archive = Archive(stack.lake_config())
        try:
            async def analysed() -> bool:
                await page()
                return len(archive.message_versions(conversation)) == 3 and len(archive.messages(conversation)) == 3 + LOG_LIMIT + 3

            await eventually(analysed, timeout=30, interval=0.2)
            if stack.kind == "real":  # the page comes from the archive: Redis no longer holds those seqs
                client = redis_client.connect_sync(stack.env["IMFLOW_REDIS_URL"])  # a cluster too
                try:
                    async def trimmed() -> bool:
                        await page()
                        return await asyncio.to_thread(lambda: client.zcount(keys.conversation_log(conversation), 1, 3) == 0)

                    await eventually(trimmed, timeout=30, interval=0.2)
                finally:
                    client.close()
            await page()
            assert [p for p in seen if p != above] == [], f"{len(seen)} pages read"
            versions = archive.message_versions(conversation)
            assert versions[["seq", "version", "kind", "by_user"]].values.tolist() == [
                [1, 2, "edit", users.alice], [1, 3, "edit", users.alice], [2, 1, "recall", users.alice]]
            latest = archive.messages(conversation).set_index("seq")
            assert orjson.loads(latest.loc[1, "body"]) == {"text": "m0, edited twice"} and latest.loc[1, "version"] == 3
            assert latest.loc[2, "body"] == "{}" and bool(latest.loc[2, "recalled"])
            assert latest.loc[2, "recalled_by"] == users.alice and latest.loc[3, "version"] == 1
            originals = archive.sql(f"SELECT seq, body FROM im_msg_content WHERE conversation = '{conversation}' "
                                    "AND seq <= 2 ORDER BY seq").fetchall()
            assert [orjson.loads(body)["text"] for _, body in originals] == ["m0", "m1"], "as sent, for analysts"
        finally:
            archive.close()


def test_the_archive_reader_applies_versions(tmp_path) -> None:
    """ArchiveReader's pages and contents: the latest edit, the tombstone over any edit, repeats ignored."""
    config = LakeConfig.from_url(tmp_path / "lake")
    conversation = "p:a:b"
    messages = [{"mid": 100 + seq, "seq": seq, "conversation": conversation, "sender": "a", "client_msg_id": f"c{seq}",
                 "type": "text", "body": {"text": f"v1 of {seq}"}, "sent_at_ms": seq} for seq in (1, 2, 3)]

    def row(seq: int, version: int, kind: str, body: dict, at_ms: int) -> dict:
        return {"mid": 100 + seq, "conversation": conversation, "seq": seq, "version": version, "kind": kind,
                "body": orjson.dumps(body).decode(), "by_user": "a", "at_ms": at_ms}

    rows = [row(1, 3, "edit", {"text": "v3"}, 30), row(1, 2, "edit", {"text": "v2"}, 20), row(1, 2, "edit", {"text": "v2"}, 20),
            row(2, 2, "edit", {"text": "v2"}, 21), row(2, 2, "recall", {}, 40)]
    with lake_connect(config) as db:
        write_records(db, [{"kind": "message", "message": m, "members": ["a", "b"]} for m in messages]
                      + [{"kind": "rows", "table": VERSIONS, "rows": rows}])
    reader = ArchiveReader(config)
    try:
        page = reader.history_page("b", conversation, 10, 10)
        assert page[2] == {**messages[0], "body": {"text": "v3"}, "version": 3, "edited_at_ms": 30}
        assert page[1] == {**messages[1], "body": {}, "version": 2, "edited_at_ms": 21, "recalled_at_ms": 40, "recalled_by": "a"}
        assert page[0] == messages[2]
        assert reader.contents(conversation, [(101, 1), (103, 3)]) == [page[0], page[2]]
    finally:
        reader.close()


# -- the unread rule, a property against the real Redis's scripts


class UnreadModel:
    """The rule in a few lines: unread = max(0, last - read - #recalled seqs in (read, last])."""

    def __init__(self) -> None:
        self.last = self.read = 0
        self.own: set[int] = set()
        self.recalled: set[int] = set()

    def unread(self) -> int:
        return max(0, self.last - self.read - sum(1 for seq in self.recalled if self.read < seq <= self.last))


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(1, 12), st.booleans()),
        st.tuples(st.just("advance"), st.integers(1, 12), st.just(False)),
        st.tuples(st.just("read"), st.integers(0, 13), st.just(False)),
        st.tuples(st.just("recall"), st.integers(1, 12), st.just(False)),
        st.tuples(st.just("repair"), st.just(0), st.just(False)),
    ),
    max_size=40,
)


@pytest.mark.redis
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_the_unread_rule_holds_for_any_sequence(redis_url: str, ops: list[tuple[str, int, bool]]) -> None:
    """deliver.lua, advance.lua, read.lua, amend_member.lua (a recall) and repair_unread.lua keep
    the count and the total at the model's, whatever the order (a write fan-out delivery and a
    read fan-out advance of the same conversation alike)."""
    client = redis_client.connect_sync(redis_url)  # a single server or a cluster, as the suite runs
    scripts = {name: client.register_script(lua_source(name))
               for name in ("deliver", "advance", "read", "amend_member", "repair_unread")}
    user, gid = f"u{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    conversation, state = f"g:{gid}", keys.user_state_keys(user)
    client.sadd(keys.user_groups(user), gid)
    model = UnreadModel()
    try:
        for op, seq, own in ops:
            if op == "deliver":
                entry = orjson.dumps({"mid": 1000 + seq, "seq": seq, "body": {"text": "x"}})
                scripts["deliver"](keys=state, args=[conversation, seq, 1000 + seq, entry, int(own), 100])
                if seq > model.last:
                    model.last = seq
                    if own:
                        model.own.add(seq)
                        model.read = max(model.read, seq)
            elif op == "advance":
                scripts["advance"](keys=[*state, keys.user_groups(user)], args=[conversation, seq, 0, gid])
                model.last = max(model.last, seq)
            elif op == "read":
                scripts["read"](keys=state, args=[conversation, seq])
                model.read = max(model.read, min(seq, model.last))
            elif op == "recall":
                tombstone = orjson.dumps({"mid": 1000 + seq, "seq": seq, "body": {}, "recalled_at_ms": 1})
                scripts["amend_member"](keys=state, args=[conversation, seq, 1000 + seq, tombstone, 1 << 52, 1,
                                                          int(seq in model.own)])
                if seq > model.read and seq not in model.own:
                    model.recalled.add(seq)
            else:
                scripts["repair_unread"](keys=state, args=[])
            count = int(client.hget(keys.unread(user), conversation) or 0)
            total = int(client.get(keys.unread_total(user)) or 0)
            assert (count, total) == (model.unread(), model.unread()), (op, seq, own)
        fixed, _, total = scripts["repair_unread"](keys=state, args=[])
        assert (fixed, total) == (0, model.unread()), "the counts were what a rebuild makes of them"
    finally:
        client.delete(*state, keys.user_groups(user))
        client.close()


async def test_a_member_who_leaves_keeps_no_recalled_record(any_redis) -> None:
    from imflow.core.storage import groups as group_store
    from imflow.core.storage.scripts import script

    await group_store.join(any_redis, "g1", {"u1": "member"}, actor=None, max_members=10)
    tombstone = orjson.dumps({"mid": 103, "seq": 3, "body": {}, "recalled_at_ms": 1})
    await script(any_redis, "amend_member")(keys=keys.user_state_keys("u1"), args=["g:g1", 3, 103, tombstone, 1 << 52, 1, 0])
    assert await any_redis.hget(keys.recalled("u1"), "g:g1") == b"3"
    await group_store.leave(any_redis, "g1", "u1")
    assert await any_redis.hget(keys.recalled("u1"), "g:g1") is None


async def test_the_log_keeps_an_amended_entry_until_the_archive_has_its_version(any_redis) -> None:
    """A flush that sealed the message before the recall's row was queued must not trim the
    tombstone: the archive would show the original body until the next flush."""
    from imflow.core.ids import IdGenerator
    from imflow.core.models import SendCommand
    from imflow.core.storage import amend, archive_queue
    from imflow.core.storage.ingest import accept
    from imflow.core.storage.scripts import script

    conversation, ids = "p:alice:bob", IdGenerator(1)
    for i in range(6):
        command = SendCommand(sender="alice", client_msg_id=f"c{i}", conversation=conversation, body={"text": "x"}, sent_at_ms=1)
        await accept(any_redis, ids, command, 60, log_limit=3)
    entry = await amend.log_entry(any_redis, conversation, 2)
    assert entry is not None
    assert await amend.rewrite_log(any_redis, conversation, 2, entry, entry.replace(b'"x"', b'"y"'), "2:2")
    log = keys.conversation_log(conversation)
    trim = [log, keys.conversation_sealed(conversation), keys.conversation_amended(conversation)]

    async def seqs() -> list[int]:
        return [int(score) for _, score in await any_redis.zrange(log, 0, -1, withscores=True)]

    await script(any_redis, "trim_log")(keys=trim, args=[6, 3])
    assert await seqs() == [2, 3, 4, 5, 6], "sealed, but its version row is not in the archive yet"
    await accept(any_redis, ids, SendCommand(sender="alice", client_msg_id="c6", conversation=conversation,
                                             body={"text": "x"}, sent_at_ms=1), 60, log_limit=3)
    assert await seqs() == [2, 3, 4, 5, 6, 7], "an ingest's trim keeps it too"
    version_row = {"kind": "rows", "table": VERSIONS, "rows": [{"conversation": conversation, "seq": 2, "kind": "edit",
                                                                "version": 2}]}
    await archive_queue._seal(any_redis, [version_row, {"kind": "message", "message": {"conversation": conversation, "seq": 7}}], 3)
    assert await seqs() == [5, 6, 7]


async def test_a_seal_lets_go_only_of_the_changes_the_archive_committed(any_redis) -> None:
    """A message changed twice before the archive's next flush: the flush that committed the
    first change's row must not let the log drop the entry while the second's row is queued
    (history below the log would show the first change, or a recalled message's edited body)."""
    from imflow.core.ids import IdGenerator
    from imflow.core.models import SendCommand
    from imflow.core.storage import amend, archive_queue
    from imflow.core.storage.ingest import accept

    conversation, ids = "p:alice:bob", IdGenerator(1)
    for i in range(6):
        command = SendCommand(sender="alice", client_msg_id=f"c{i}", conversation=conversation, body={"text": "x"}, sent_at_ms=1)
        await accept(any_redis, ids, command, 60, log_limit=3)
    first = await amend.log_entry(any_redis, conversation, 2)
    assert first is not None
    second = first.replace(b'"x"', b'"v2"')
    assert await amend.rewrite_log(any_redis, conversation, 2, first, second, amend.change_mark(2, "edit", 2))
    # the flush has read the queue (the v2 row); now the message is recalled
    assert await amend.rewrite_log(any_redis, conversation, 2, second, b'{"tombstone":1}', amend.change_mark(2, "recall", 2))
    log = keys.conversation_log(conversation)

    async def seqs() -> list[int]:
        return [int(score) for _, score in await any_redis.zrange(log, 0, -1, withscores=True)]

    def sealed(*rows: tuple[str, int], upto: int) -> list[dict]:
        versions = [{"conversation": conversation, "seq": 2, "kind": kind, "version": version} for kind, version in rows]
        return [{"kind": "rows", "table": VERSIONS, "rows": versions},
                {"kind": "message", "message": {"conversation": conversation, "seq": upto}}]

    await archive_queue._seal(any_redis, sealed(("edit", 2), upto=6), 3)
    assert await seqs() == [2, 3, 4, 5, 6], "the recall's row is still queued: the tombstone stays"
    assert await any_redis.zrange(keys.conversation_amended(conversation), 0, -1) == [b"2:r"]
    await archive_queue._seal(any_redis, sealed(("recall", 2), upto=6), 3)
    assert await seqs() == [4, 5, 6], "every change of it is in the archive now"


SETTINGS_FOR_CORE = {"read_fan_out_threshold": 50, "accounts": "open", "topic_partitions": 1}
_CORE_IDS: dict[int, Any] = {}


class AmendedSpy:
    """A plugin recording ``imflow_message_amended`` calls."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    from imflow.plugin_api import hookimpl

    @hookimpl
    async def imflow_message_amended(self, amendment: Any, services: Any) -> None:
        self.seen.append(amendment)


async def core_group(redis_client: Any, gid: str, members: tuple[str, ...]) -> tuple[Any, AmendedSpy, Any]:
    """Services with a hook spy, a group ``gid`` of alice (owner) and ``members``, and a send function."""
    import itertools

    from imflow.core import groups
    from imflow.core.agents import AgentContext
    from imflow.core.ids import IdGenerator
    from imflow.core.models import SendCommand
    from imflow.core.plugin_calls import Hooks, empty_manager
    from imflow.core.sending import handle_sends
    from imflow.core.services import Services
    from imflow.core.settings import Settings

    settings_, manager, spy = Settings(**SETTINGS_FOR_CORE), empty_manager(), AmendedSpy()
    manager.register(spy, name="spy")
    services = Services(settings_, redis_client, hooks=Hooks(manager))
    await groups.create(services, groups.CreateGroup("alice", "g", members, gid=gid))
    ids, numbers = _CORE_IDS.setdefault(0, IdGenerator(0)), itertools.count()  # one generator: mids never repeat

    async def send(sender: str, body: dict) -> Any:
        command = SendCommand(sender=sender, client_msg_id=f"{gid}-{next(numbers)}", conversation=f"g:{gid}", body=body,
                              sent_at_ms=1, gateway="gw", origin="o")
        context = AgentContext(settings=settings_, redis=redis_client, producer=None, hooks=services.hooks,
                               generators={0: ids})
        return (await handle_sends(context, [(command, 0)]))[0]

    return services, spy, send


async def test_a_member_who_left_before_a_recall_keeps_no_body_of_it(any_redis) -> None:
    from imflow.core import amending, groups

    services, _, send = await core_group(any_redis, "g1", ("bob", "carol"))
    secret = await send("alice", {"text": "secret"})
    other = await send("bob", {"text": "elsewhere"})
    _, _, send2 = await core_group(any_redis, "g3", ("carol",))
    kept = await send2("alice", {"text": "kept"})
    await groups.leave(services, groups.LeaveGroup("carol", "g1"))
    assert (await amending.recall(services, amending.Recall("alice", "g:g1", secret.seq, 10**15))).changed
    carol = [orjson.loads(entry) for entry in await any_redis.zrange(keys.inbox("carol"), 0, -1)]
    assert [m["mid"] for m in carol] == [kept.mid], "the group's messages left her inbox with her; others stay"
    bob = [orjson.loads(entry) for entry in await any_redis.zrange(keys.inbox("bob"), 0, -1)]
    assert [m["body"] for m in bob if m["mid"] in (secret.mid, other.mid)] == [{}, {"text": "elsewhere"}]


async def test_a_change_interrupted_after_the_log_is_finished_by_its_repeat(any_redis, monkeypatch) -> None:
    """A Redis error in the member step: the request fails, the log has the change; the client's
    retry finds it untold and does members, archive row, pushes and hook; a further repeat does nothing."""
    from imflow.core import amending
    from imflow.core.storage import amend, gateway_events

    services, spy, send = await core_group(any_redis, "g3", ("bob",))
    sent = [await send("alice", {"text": "oops"}), await send("alice", {"text": "typo"})]
    await any_redis.hset(keys.user_gateways("bob"), "gw1", 1)  # bob is online: pushes go to gw1
    real_members, calls = amend.amend_members, {"members": 0, "rows": 0}

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["members"] += 1
        if calls["members"] in (1, 3):
            raise redis.ConnectionError("blip")
        return await real_members(*args, **kwargs)

    real_row = amend.record_version

    async def counted_row(*args: Any, **kwargs: Any) -> None:
        calls["rows"] += 1
        await real_row(*args, **kwargs)

    frames: list[dict] = []
    real_frame = gateway_events.frame_to_gateways

    async def spied(redis_client: Any, by_node: Any, frame: dict, *args: Any, **kwargs: Any) -> Any:
        frames.append(frame)
        return await real_frame(redis_client, by_node, frame, *args, **kwargs)

    monkeypatch.setattr(amend, "amend_members", flaky)
    monkeypatch.setattr(amend, "record_version", counted_row)
    monkeypatch.setattr(gateway_events, "frame_to_gateways", spied)
    recall = amending.Recall("alice", "g:g3", sent[0].seq, 10**15)
    edit = amending.Edit("alice", "g:g3", sent[1].seq, {"text": "fixed"}, 10**15)
    for command, change in ((recall, amending.recall), (edit, amending.edit)):
        with pytest.raises(redis.ConnectionError):
            await change(services, command)
        assert not frames and not spy.seen and calls["rows"] == 0, "nobody was told yet"
        again = await change(services, command)
        assert again.changed, "the repeat finished it"
        assert [f["op"] for f in frames] == ["recalled" if command is recall else "edited"] and len(spy.seen) == 1
        bob = {m["mid"]: m for m in map(orjson.loads, await any_redis.zrange(keys.inbox("bob"), 0, -1))}
        assert bob[again.message["mid"]] == again.message
        assert await any_redis.zcard(keys.conversation_untold("g:g3")) == 0
        done = dict(calls)
        third = await change(services, command)
        assert (third.changed, third.message) == (False, again.message)
        assert calls == done and len(frames) == 1 and len(spy.seen) == 1, "a repeat of a told change does nothing"
        frames.clear()
        spy.seen.clear()
        calls["rows"] = 0


async def test_deliver_leaves_out_a_message_recalled_before_it_arrived(any_redis) -> None:
    """A recall between a message's accept and its fan-out: the member's recalled list has the
    seq, so deliver.lua adds no inbox entry (the original body), pushes nothing, counts it not."""
    from imflow.core.storage.scripts import script

    state, conversation = keys.user_state_keys("bob"), "g:g1"
    tombstone = orjson.dumps({"mid": 102, "seq": 2, "body": {}, "recalled_at_ms": 1})
    await script(any_redis, "amend_member")(keys=state, args=[conversation, 2, 102, tombstone, 1 << 52, 1, 0])
    deliver = script(any_redis, "deliver")
    one = await deliver(keys=state, args=[conversation, 1, 101, b'{"mid":101,"seq":1}', 0, 100])
    two = await deliver(keys=state, args=[conversation, 2, 102, b'{"mid":102,"seq":2,"body":{"text":"x"}}', 0, 100])
    assert [list(one), list(two)] == [[1, 1, 1], [0, 1, 1]]
    assert await any_redis.zrange(keys.inbox("bob"), 0, -1) == [b'{"mid":101,"seq":1}']
    assert await any_redis.hget(keys.last_seq("bob"), conversation) == b"2"
