"""Conversation settings (docs/protocol.md, "Conversation settings"): pin, mute, hide until the
next message, mark unread until the next read; every device of the user learns each change and
the first sync page carries them.

The storage and service rules on fakeredis and the real redis-server; the protocol on both stacks.
"""

from __future__ import annotations

import asyncio

import pytest

from imflow.client import Client, ClientError
from imflow.core import conversation_settings, conversations, groups
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.models import direct_conversation
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import conversation_settings as store
from imflow.core.storage import keys

from stacks import connect

DEFAULTS = {"pinned": False, "muted": False, "hidden": False, "marked_unread": False}
ALICE_BOB = "p:alice:bob"


# -- the service and its storage, on fakeredis and the real redis-server


@pytest.fixture
def services(any_redis) -> Services:
    return Services(Settings(topic_partitions=1, accounts="open"), any_redis)  # users without an account, as the stacks


async def set_conversation(services: Services, user: str = "alice", conversation: str = ALICE_BOB, **changes: bool):
    command = conversation_settings.SetConversation(user, conversation, **changes)
    return (await conversation_settings.set_conversation(services, command)).to_dict()


async def test_each_setting_is_kept_and_defaults_leave_no_trace(services: Services) -> None:
    assert await set_conversation(services, pinned=True) == {"conversation": ALICE_BOB, **DEFAULTS, "pinned": True}
    assert await set_conversation(services, muted=True, marked_unread=True) == {
        "conversation": ALICE_BOB, **DEFAULTS, "pinned": True, "muted": True, "marked_unread": True,
    }
    assert await conversation_settings.muted_among(services, "alice", [ALICE_BOB, "p:alice:cid"]) == {ALICE_BOB}
    assert await conversation_settings.muted_among(services, "bob", [ALICE_BOB]) == set(), "settings are per user"
    cleared = await set_conversation(services, pinned=False, muted=False, marked_unread=False)
    assert cleared == {"conversation": ALICE_BOB, **DEFAULTS}
    assert not await services.redis.exists(keys.conversation_settings("alice")), "back at the defaults: no field"


async def test_hidden_lasts_until_a_message_comes_after_it(services: Services) -> None:
    await services.redis.set(keys.conversation_seq(ALICE_BOB), 7)
    assert (await set_conversation(services, hidden=True))["hidden"] is True
    stored = (await store.among(services.redis, "alice", [ALICE_BOB]))[ALICE_BOB]
    assert stored.hidden_seq == 7 and stored.hidden_at(7) and not stored.hidden_at(8)
    await services.redis.set(keys.conversation_seq(ALICE_BOB), 8)  # a new message
    assert (await set_conversation(services, pinned=True))["hidden"] is False, "the message un-hid it"
    assert (await set_conversation(services, hidden=True))["hidden"] is True, "hidden again, after seq 8 now"
    assert (await set_conversation(services, hidden=False))["hidden"] is False


async def test_big_seqs_are_kept_exactly(services: Services) -> None:
    seq = 2**53 - 1  # the largest seq a client can hold
    await services.redis.set(keys.conversation_seq(ALICE_BOB), seq)
    await set_conversation(services, hidden=True)
    await set_conversation(services, pinned=True)  # rewritten by the script: the seq survives
    assert (await store.among(services.redis, "alice", [ALICE_BOB]))[ALICE_BOB].hidden_seq == seq


async def test_changes_from_two_devices_at_once_both_count(services: Services) -> None:
    await asyncio.gather(*(set_conversation(services, **{name: True}) for name in ("pinned", "muted", "marked_unread")))
    assert await set_conversation(services, hidden=False) == {
        "conversation": ALICE_BOB, "pinned": True, "muted": True, "hidden": False, "marked_unread": True,
    }


async def test_a_non_member_gets_not_found(services: Services) -> None:
    await groups.create(services, groups.CreateGroup("alice", "team", ("bob",), gid="team"))
    for conversation in (ALICE_BOB, "g:team", "g:nothing"):
        with pytest.raises(ImflowError) as error:
            await set_conversation(services, user="eve", conversation=conversation, pinned=True)
        assert error.value.code == ErrorCode.NOT_FOUND
    assert not await services.redis.exists(keys.conversation_settings("eve"))
    assert (await set_conversation(services, user="bob", conversation="g:team", muted=True))["muted"] is True


async def test_leaving_or_being_removed_forgets_the_settings(services: Services) -> None:
    await groups.create(services, groups.CreateGroup("alice", "team", ("bob", "cal"), gid="team"))
    for user in ("bob", "cal"):
        await set_conversation(services, user=user, conversation="g:team", pinned=True, muted=True)
    await groups.leave(services, groups.LeaveGroup("bob", "team"))
    await groups.remove(services, groups.RemoveMember("alice", "team", "cal"))
    await groups.add(services, groups.AddMembers("alice", "team", ("bob", "cal")))
    for user in ("bob", "cal"):  # back in the group: the settings start from the defaults
        assert await store.among(services.redis, user, ["g:team"]) == {"g:team": store.DEFAULTS}


async def test_a_read_clears_marked_unread_only(services: Services) -> None:
    await set_conversation(services, pinned=True, marked_unread=True)
    await conversations.read(services, conversations.Read("alice", ALICE_BOB, 0))
    stored = (await store.among(services.redis, "alice", [ALICE_BOB]))[ALICE_BOB]
    assert stored == store.Stored(pinned=True)


# -- the protocol, on both stacks


async def setting(client: Client, conversation: str, **changes: bool) -> dict:
    reply = await client.request({"op": "set_conversation", "conversation": conversation, **changes})
    assert reply.pop("op") == "conversation_settings" and reply.pop("ref")
    return reply


async def listed(client: Client, conversation: str) -> dict:
    """The conversation's entry of the client's first sync page."""
    (entry,) = [c for c in (await client.sync())["conversations"] if c["conversation"] == conversation]
    return entry


def settings_of(entry: dict) -> dict:
    return {name: entry[name] for name in DEFAULTS}


async def test_settings_reach_the_other_devices_and_every_sync(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with (
        await connect(stack, users.alice) as phone,
        await connect(stack, users.alice, gateway=1) as laptop,
        await connect(stack, users.bob) as bob,
    ):
        await bob.send_text(users.alice, "hi")
        assert settings_of(await listed(laptop, conversation)) == DEFAULTS
        expected = {"conversation": conversation, **DEFAULTS}
        for name in ("pinned", "muted", "marked_unread"):
            expected[name] = True
            assert await setting(phone, conversation, **{name: True}) == expected
            pushed = await laptop.next_message(op="conversation_settings")
            assert pushed == {"op": "conversation_settings", **expected}
            assert settings_of(await listed(laptop, conversation)) == settings_of(expected)
        assert settings_of(await listed(bob, conversation)) == DEFAULTS, "another user's settings are their own"
        await setting(phone, conversation, pinned=False, muted=False)
        assert (await laptop.next_message(op="conversation_settings"))["pinned"] is False
        # the phone made the changes: its replies told it, no push echoes them
        await phone.ping()
        assert all(push["op"] != "conversation_settings" for push in _queued(phone))


def _queued(client: Client) -> list[dict]:
    pushes = []
    while not client.pushes.empty():
        pushes.append(client.pushes.get_nowait())
    return pushes


async def test_hidden_until_the_next_message_and_marked_unread_until_the_next_read(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice, await connect(stack, users.bob, gateway=1) as bob:
        await bob.send_text(users.alice, "one")
        assert (await setting(alice, conversation, hidden=True, marked_unread=True))["hidden"] is True
        entry = await listed(alice, conversation)
        assert entry["hidden"] is True and entry["marked_unread"] is True
        sent = await bob.send_text(users.alice, "two")
        await alice.next_message()  # "one"
        await alice.next_message()  # "two": it un-hides the conversation
        assert (await listed(alice, conversation))["hidden"] is False
        async with await connect(stack, users.alice, gateway=1) as laptop:
            await alice.read(conversation, sent["seq"])
            pushed = await laptop.next_message(op="conversation_settings")
            assert pushed["marked_unread"] is False and pushed["conversation"] == conversation
        assert settings_of(await listed(alice, conversation)) == DEFAULTS


async def test_a_group_not_joined_or_a_stranger_conversation_is_not_found(stack, users) -> None:
    async with await connect(stack, users.alice) as alice, await connect(stack, users.eve) as eve:
        group = await alice.request({"op": "create_group", "name": "team", "members": [users.bob]})
        for conversation in (f"g:{group['gid']}", direct_conversation(users.alice, users.bob)):
            with pytest.raises(ClientError) as error:
                await setting(eve, conversation, pinned=True)
            assert error.value.code == "not_found"
        assert (await setting(alice, f"g:{group['gid']}", muted=True))["muted"] is True


async def test_bad_set_conversation_frames(stack, users) -> None:
    conversation = direct_conversation(users.alice, users.bob)
    async with await connect(stack, users.alice) as alice:
        for frame in (
            {"conversation": conversation},  # no setting at all
            {"conversation": conversation, "pinned": None},
            {"conversation": conversation, "pinned": 1},
            {"conversation": conversation, "muted": "yes"},
            {"conversation": conversation, "pinned": True, "archived": True},
            {"conversation": "not a conversation", "pinned": True},
            {"pinned": True},
        ):
            with pytest.raises(ClientError) as error:
                await alice.request({"op": "set_conversation", **frame})
            assert error.value.code == "bad_frame", frame
