"""Mentions (docs/protocol.md, "Mentions"): the send checks, and the "mentions me" counts in
sync's conversation states, the ``read`` reply and ``unread`` push and the ``msg`` push, in
write and read fan-out groups; on both stacks over the WebSocket protocol, and as a property
of the core (core/sending.py, core/conversations.py) against a small model, on fakeredis and
the real redis-server."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stacks import READ_FAN_OUT_THRESHOLD, connect, refused

from imflow.core import conversations, groups, mentions
from imflow.core.agents import AgentContext
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.hookspecs import hookimpl
from imflow.core.ids import IdGenerator
from imflow.core.models import SendCommand
from imflow.core.plugin_calls import Hooks, empty_manager
from imflow.core.sending import handle_sends
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import keys, redis_client

# -- over the protocol, both stacks


async def make_group(owner_client, members: list[str]) -> str:
    return (await owner_client.request({"op": "create_group", "name": "team", "members": members}))["conversation"]


async def test_refused_mentions_change_nothing(stack, users) -> None:
    async with await connect(stack, users.ann) as ann, await connect(stack, users.ben) as ben:
        group = await make_group(ann, [users.ben])
        direct = {"to": users.ben, "body": {"text": "hi @ben", "mentions": [users.ben]}}
        await refused(ann.send(direct), "bad_frame")
        await refused(ann.send({"conversation": group, "body": {"text": "@eve", "mentions": [users.eve]}}), "not_a_member")
        await refused(ben.send({"conversation": group, "body": {"text": "@all", "mention_all": True}}), "forbidden")
        for bad in ({"mentions": [users.ben, users.ben]}, {"mentions": "ben"}, {"mention_all": "yes"},
                    {"mentions": [f"u{i}" for i in range(51)]}):
            await refused(ann.send({"conversation": group, "body": {"text": "x", **bad}}), "bad_frame")
        # nothing was stored, no count moved: the next message is seq 1, nobody has a mention
        sent = await ann.send({"conversation": group, "body": {"text": "plain"}})
        assert sent["seq"] == 1
        assert (await ann.history(group))["messages"][0]["body"] == {"text": "plain"}
        assert "mentions" not in (await ben.sync())["conversations"][0]
        assert (await ben.history(f"p:{min(users.ann, users.ben)}:{max(users.ann, users.ben)}"))["messages"] == []


async def test_write_fan_out_counts_mentions_until_read(stack, users) -> None:
    async with (
        await connect(stack, users.ann) as ann,
        await connect(stack, users.ben, gateway=1) as ben,
        await connect(stack, users.ben) as ben_phone,
    ):
        group = await make_group(ann, [users.ben, users.cat])
        await ann.send({"conversation": group, "body": {"text": "hello"}})
        first = await ben.next_message()
        assert "mentions" not in first["unread"] and first["message"]["body"] == {"text": "hello"}
        await ann.send({"conversation": group, "body": {"text": "@ben", "mentions": [users.ben]}})
        pushed = await ben.next_message()
        assert pushed["message"]["body"] == {"text": "@ben", "mentions": [users.ben]}
        assert pushed["unread"] == {"conversation": group, "count": 2, "total": 2, "mentions": 1}
        await ann.send({"conversation": group, "body": {"text": "@all", "mention_all": True}})
        assert (await ben.next_message())["unread"]["mentions"] == 2
        state = {s["conversation"]: s for s in (await ben.sync())["conversations"]}[group]
        assert (state["unread"], state["mentions"]) == (3, 2)
        cat_state = {s["conversation"]: s for s in (await connect_sync(stack, users.cat))["conversations"]}[group]
        assert cat_state["mentions"] == 1, "cat: only the @all"
        # a read clears the mentions it covers, on this device and the others
        reply = await ben.read(group, 2)
        assert reply == {"op": "unread", "conversation": group, "count": 1, "total": 1, "read_seq": 2, "mentions": 1, "ref": reply["ref"]}
        other = await ben_phone.next_message(op="unread")
        assert other["mentions"] == 1 and other["read_seq"] == 2
        reply = await ben.read(group, 3)
        assert "mentions" not in reply and reply["count"] == 0


async def connect_sync(stack, user: str) -> dict:
    async with await connect(stack, user) as client:
        return await client.sync()


async def test_read_fan_out_counts_named_and_everyone_mentions(stack, users) -> None:
    others = [getattr(users, f"m{i}") for i in range(READ_FAN_OUT_THRESHOLD)]
    async with await connect(stack, users.ann) as ann:
        group = await make_group(ann, others)  # a read fan-out group
        await ann.send({"conversation": group, "body": {"text": "@m0", "mentions": [others[0]]}})
        await ann.send({"conversation": group, "body": {"text": "@all", "mention_all": True}})
        await ann.send({"conversation": group, "body": {"text": "plain"}})
    async with await connect(stack, others[0]) as m0, await connect(stack, others[1]) as m1:
        states = {s["conversation"]: s for s in (await m0.sync())["conversations"]}
        assert (states[group]["unread"], states[group]["mentions"]) == (3, 2)
        states = {s["conversation"]: s for s in (await m1.sync())["conversations"]}
        assert (states[group]["unread"], states[group]["mentions"]) == (3, 1)
        reply = await m1.read(group, 2)
        assert "mentions" not in reply and reply["count"] == 1
        assert (await m0.read(group, 1))["mentions"] == 1


@pytest.mark.parametrize("size", [2, READ_FAN_OUT_THRESHOLD])  # write and read fan-out
async def test_a_recalled_mention_stops_counting(stack, users, size: int) -> None:
    others = [getattr(users, f"m{i}") for i in range(size)]
    async with await connect(stack, users.ann) as ann:
        group = await make_group(ann, others)
        await ann.send({"conversation": group, "body": {"text": "@m0", "mentions": [others[0]]}})
        sent = await ann.send({"conversation": group, "body": {"text": "@all", "mention_all": True}})
        async with await connect(stack, others[0]) as m0:
            states = {s["conversation"]: s for s in (await m0.sync())["conversations"]}
            assert states[group]["mentions"] == 2
            await ann.request({"op": "message.recall", "conversation": group, "seq": sent["seq"]})
            states = {s["conversation"]: s for s in (await m0.sync())["conversations"]}
            assert (states[group]["unread"], states[group]["mentions"]) == (1, 1)
            states = {s["conversation"]: s for s in (await connect_sync(stack, others[1]))["conversations"]}
            assert "mentions" not in states[group]


# -- the core against a model (a property test)

SETTINGS = Settings(read_fan_out_threshold=1000, accounts="open")
MEMBERS = ("ann", "ben", "cat", "dan")
CMIDS = itertools.count()


class ChosenMode:
    """A fan-out policy that answers what the test set last (so a group switches mode freely)."""

    def __init__(self) -> None:
        self.mode = "write"

    @hookimpl
    def imflow_fan_out_policy(self, conversation: str, members: int, sender: str) -> str:
        return self.mode


send_op = st.tuples(
    st.just("send"), st.sampled_from(MEMBERS), st.sampled_from(["write", "read"]),
    st.frozensets(st.sampled_from(MEMBERS)), st.booleans(),
)
read_op = st.tuples(st.just("read"), st.sampled_from(MEMBERS), st.integers(0, 12))
recall_op = st.tuples(st.just("recall"), st.sampled_from(MEMBERS), st.integers(1, 12))
# an edit of message seq to a body naming these members (and everyone, if its sender may)
edit_op = st.tuples(st.just("edit"), st.integers(1, 12), st.frozensets(st.sampled_from(MEMBERS)), st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(send_op, read_op, recall_op, edit_op), min_size=1, max_size=14))
async def test_mention_counts_follow_the_model(any_redis, ops) -> None:
    await redis_client.flush(any_redis)
    policy = ChosenMode()
    manager = empty_manager()
    manager.register(policy, name="policy")
    ctx = AgentContext(settings=SETTINGS, redis=any_redis, producer=None, hooks=Hooks(manager), generators={0: IdGenerator(0)})
    await groups.create(ctx, groups.CreateGroup("ann", "g", MEMBERS[1:], gid="prop"))
    conversation = "g:prop"
    last = 0
    read = dict.fromkeys(MEMBERS, 0)
    mentioned: dict[str, set[int]] = {m: set() for m in MEMBERS}
    recalled: dict[str, set[int]] = {m: set() for m in MEMBERS}
    bodies: dict[int, tuple[str, dict]] = {}  # seq -> (its sender, its body now)
    for op in ops:
        if op[0] == "send":
            _, sender, mode, named, everyone = op
            policy.mode = mode
            everyone = everyone and sender == "ann"  # the owner may mention everyone
            body: dict = {"text": "x", "mentions": sorted(named), "mention_all": everyone}
            command = SendCommand(sender=sender, client_msg_id=f"c{next(CMIDS)}", conversation=conversation,
                                  body=body, sent_at_ms=1)
            await mentions.check(ctx, command)
            await handle_sends(ctx, [(command, 0)])
            last += 1
            bodies[last] = (sender, body)
            read[sender] = last  # one has read what one sends
            for member in MEMBERS:
                if everyone or member in named:
                    mentioned[member].add(last)
        elif op[0] == "read":
            _, user, seq = op
            reply = await conversations.read(ctx, conversations.Read(user, conversation, seq))
            read[user] = max(read[user], min(seq, last))
            assert reply.mentions == model_count(user, read, last, mentioned, recalled)
        elif op[0] == "edit":  # as core/amending.py's edit calls it once the log holds the new version
            _, seq, named, everyone = op
            if seq > last or not bodies[seq][1]:  # no such message, or recalled (an edit is refused)
                continue
            sender, old = bodies[seq]
            new = {"text": "y", "mentions": sorted(named), "mention_all": everyone and sender == "ann"}
            bodies[seq] = (sender, new)
            for _ in range(2):  # idempotent: a repeat changes nothing
                await mentions.edited(ctx, conversation, seq, old, new)
            for member in MEMBERS:  # a mention counts while every version names the user
                if not (new["mention_all"] or member in named):
                    mentioned[member].discard(seq)
        else:  # a recall as H1's mechanism records it: the seq, for those who had not read it
            _, _, seq = op
            if seq > last:
                continue
            bodies[seq] = (bodies[seq][0], {})
            for member in MEMBERS:
                if read[member] < seq:
                    recalled[member].add(seq)
                    await any_redis.hset(keys.recalled(member), conversation, ",".join(map(str, sorted(s for s in recalled[member] if s > read[member]))))
        for member in MEMBERS:
            page = await conversations.sync(ctx, conversations.Sync(member, None, 1))
            state = {s["conversation"]: s for s in page.conversations or []}.get(conversation, {})
            assert state.get("mentions", 0) == model_count(member, read, last, mentioned, recalled), (member, op)


def model_count(user: str, read: dict[str, int], last: int, mentioned: dict[str, set[int]], recalled: dict[str, set[int]]) -> int:
    return len({seq for seq in mentioned[user] if read[user] < seq <= last} - recalled[user])


# -- the send checks in the core


async def test_checks_in_the_core(any_redis) -> None:
    services = Services(SETTINGS, any_redis)
    await groups.create(services, groups.CreateGroup("ann", "g", ("ben",), gid="chk"))

    def command(sender: str, conversation: str, **body) -> SendCommand:
        return SendCommand(sender=sender, client_msg_id="x", conversation=conversation, body={"text": "x", **body}, sent_at_ms=1)

    for cmd, code in [
        (command("ann", "p:ann:ben", mentions=["ben"]), ErrorCode.BAD_FRAME),
        (command("ann", "g:chk", mentions=["ben", "zed"]), ErrorCode.NOT_A_MEMBER),
        (command("ben", "g:chk", mention_all=True), ErrorCode.FORBIDDEN),
    ]:
        with pytest.raises(ImflowError) as refusal:
            await mentions.check(services, cmd)
        assert refusal.value.code == code
    await mentions.check(services, command("ann", "g:chk", mentions=["ben"], mention_all=True))  # passes
    assert not await any_redis.exists(keys.mentions("ben"))


# -- an edit that takes mentions out (core/mentions.py ``edited``; core/amending.py calls it)


@pytest.mark.parametrize("mode", ["write", "read"])
async def test_an_edit_taking_mentions_out_drops_them(any_redis, mode: str) -> None:
    await redis_client.flush(any_redis)
    policy = ChosenMode()
    policy.mode = mode
    manager = empty_manager()
    manager.register(policy, name="policy")
    ctx = AgentContext(settings=SETTINGS, redis=any_redis, producer=None, hooks=Hooks(manager), generators={0: IdGenerator(0)})
    await groups.create(ctx, groups.CreateGroup("ann", "g", MEMBERS[1:], gid="ed"))
    conversation = "g:ed"
    named = {"text": "@ben @cat", "mentions": ["ben", "cat"]}
    everyone = {"text": "@all @dan", "mentions": ["dan"], "mention_all": True}
    for cmid, body in (("e1", named), ("e2", everyone)):
        command = SendCommand(sender="ann", client_msg_id=cmid, conversation=conversation, body=body, sent_at_ms=1)
        await handle_sends(ctx, [(command, 0)])

    async def counts() -> dict[str, int]:  # as sync shows them (read fan-out: its marks not flushed yet)
        out = {}
        for member in MEMBERS[1:]:
            page = await conversations.sync(ctx, conversations.Sync(member, None, 1))
            out[member] = {s["conversation"]: s for s in page.conversations or []}[conversation].get("mentions", 0)
        return out

    assert await counts() == {"ben": 2, "cat": 2, "dan": 1}
    for _ in range(2):  # a repeat changes nothing
        await mentions.edited(ctx, conversation, 1, named, {"text": "@cat", "mentions": ["cat"]})
        assert await counts() == {"ben": 1, "cat": 2, "dan": 1}
    # @all and dan taken out, ben named: ben keeps it (in read fan-out, counted through @all, on
    # his own record now), cat and dan lose it
    now = {"text": "@ben", "mentions": ["ben"]}
    for _ in range(2):
        await mentions.edited(ctx, conversation, 2, everyone, now)
        assert await counts() == {"ben": 1, "cat": 1, "dan": 0}
    assert not await any_redis.zrange(keys.mention_all(conversation), 0, -1), "the @all record lost it"
    # an edit never adds a mention (edits do not notify), and one to a direct conversation does nothing
    await mentions.edited(ctx, conversation, 2, now, {"text": "@dan", "mentions": ["dan"]})
    assert await counts() == {"ben": 0, "cat": 1, "dan": 0}
    await mentions.edited(ctx, conversation, 2, {"text": "@dan", "mentions": ["dan"]}, everyone)
    assert await counts() == {"ben": 0, "cat": 1, "dan": 0}
    await mentions.edited(ctx, "p:ann:ben", 1, named, {"text": "x"})
    assert await counts() == {"ben": 0, "cat": 1, "dan": 0}


async def test_message_edit_taking_a_mention_out_stops_counting(stack, users) -> None:
    async with await connect(stack, users.ann) as ann:
        group = await make_group(ann, [users.ben, users.cat])
        sent = await ann.send({"conversation": group, "body": {"text": "hi @ben", "mentions": [users.ben]}})
        async with await connect(stack, users.ben) as ben:
            assert {s["conversation"]: s for s in (await ben.sync())["conversations"]}[group]["mentions"] == 1
            edit = {"op": "message.edit", "conversation": group, "seq": sent["seq"], "body": {"text": "hi all"}}
            assert (await ann.request(edit))["message"]["body"] == {"text": "hi all"}
            state = {s["conversation"]: s for s in (await ben.sync())["conversations"]}[group]
            assert (state["unread"], "mentions" in state) == (1, False)
