"""Contacts and blocking (core/contacts.py): every operation and refusal on both stacks, pushes to
the actor's other devices and to the other user, blocks refused on every gateway at once,
contacts-only privacy and group additions; at the service level the registered-accounts
refusals, the limits, the archive records, a half-done change completed by its retry, and a
property test of random sequences among four users against a small model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imflow.client import Client
from imflow.core import contacts, groups
from imflow.core.errors import ErrorCode, ImflowError
from imflow.core.models import direct_conversation
from imflow.core.services import Services
from imflow.core.settings import Settings
from imflow.core.storage import contacts as store
from imflow.core.storage import keys, redis_client, social_records

from stacks import connect, refused

# -- on both stacks, through the WebSocket protocol


def change(op: str, user: str, **fields) -> dict:
    return {"op": op, "user": user, **fields}


async def pushed(client: Client) -> dict:
    """The next ``contact`` push of a connection, without its op."""
    frame = await client.next_message(op="contact")
    assert frame.pop("op") == "contact" and "ref" not in frame
    return frame


def replied(frame: dict) -> dict:
    """A ``contact`` reply as the other devices get it pushed (no op, no ref)."""
    assert frame["op"] == "contact"
    return {key: value for key, value in frame.items() if key not in ("op", "ref")}


async def lists(client: Client) -> tuple[list, dict, list]:
    """(contacts, requests both ways, blocked users) as the client sees them."""
    mine = (await client.request({"op": "contacts"}))["contacts"]
    pending = await client.request({"op": "contact_requests"})
    blocked = (await client.request({"op": "blocked"}))["users"]
    return mine, {"incoming": pending["incoming"], "outgoing": pending["outgoing"]}, blocked


NOTHING = ([], {"incoming": [], "outgoing": []}, [])
CHANGE_OPS = ("contact_request", "contact_accept", "contact_decline", "contact_cancel", "contact_remove", "block", "unblock")


async def befriend(asker: Client, answerer: Client) -> int:
    """Make two connected users contacts; the edge's since_ms."""
    await asker.request(change("contact_request", answerer.user))
    return (await answerer.request(change("contact_accept", asker.user)))["since_ms"]


async def test_a_request_accepted_reaches_both_users_and_their_other_devices(stack, users) -> None:
    async with (
        await connect(stack, users.ann) as ann, await connect(stack, users.ann, gateway=1) as ann_phone,
        await connect(stack, users.bob, gateway=1) as bob, await connect(stack, users.bob) as bob_phone,
    ):
        sent = await ann.request(change("contact_request", users.bob, note="hi, it's Ann"))
        assert replied(sent) == {"event": "request_sent", "user": users.bob, "note": "hi, it's Ann", "at_ms": sent["at_ms"]}
        assert await pushed(ann_phone) == replied(sent)
        received = {"event": "request_received", "user": users.ann, "note": "hi, it's Ann", "at_ms": sent["at_ms"]}
        assert await pushed(bob) == received and await pushed(bob_phone) == received
        incoming = {"user": users.ann, "note": "hi, it's Ann", "at_ms": sent["at_ms"], "display_name": None, "avatar_url": None}
        assert (await lists(bob))[1] == {"incoming": [incoming], "outgoing": []}
        outgoing = {"user": users.bob, "note": "hi, it's Ann", "at_ms": sent["at_ms"]}
        assert (await lists(ann))[1] == {"incoming": [], "outgoing": [outgoing]}

        accepted = await bob.request(change("contact_accept", users.ann))
        since = accepted["since_ms"]
        assert replied(accepted) == {"event": "accepted", "user": users.ann, "since_ms": since}
        assert await pushed(bob_phone) == replied(accepted)
        for device in (ann, ann_phone):
            assert await pushed(device) == {"event": "accepted", "user": users.bob, "since_ms": since}
        for client, other in ((ann, users.bob), (bob, users.ann)):
            contact = {"user": other, "since_ms": since, "display_name": None, "avatar_url": None, "status": "active"}
            assert await lists(client) == ([contact], {"incoming": [], "outgoing": []}, [])


async def test_asking_someone_who_asked_first_makes_contacts(stack, users) -> None:
    async with await connect(stack, users.ann) as ann, await connect(stack, users.bob, gateway=1) as bob:
        await ann.request(change("contact_request", users.bob))
        assert (await pushed(bob))["event"] == "request_received"
        accepted = await bob.request(change("contact_request", users.ann, note="me too"))
        assert replied(accepted) == {"event": "accepted", "user": users.ann, "since_ms": accepted["since_ms"]}
        assert await pushed(ann) == {"event": "accepted", "user": users.bob, "since_ms": accepted["since_ms"]}
        assert [c["user"] for c in (await lists(ann))[0]] == [users.bob]
        assert [c["user"] for c in (await lists(bob))[0]] == [users.ann]
        assert (await lists(bob))[1] == (await lists(ann))[1] == {"incoming": [], "outgoing": []}


async def test_decline_cancel_and_remove_reach_the_other_user(stack, users) -> None:
    async with (
        await connect(stack, users.ann) as ann, await connect(stack, users.ann, gateway=1) as ann_phone,
        await connect(stack, users.bob, gateway=1) as bob,
    ):
        await ann.request(change("contact_request", users.bob))
        assert (await pushed(bob))["event"] == "request_received"
        assert replied(await bob.request(change("contact_decline", users.ann))) == {"event": "declined", "user": users.ann}
        assert await pushed(ann) == {"event": "declined", "user": users.bob}

        await ann.request(change("contact_request", users.bob, note="again?"))
        assert (await pushed(bob))["note"] == "again?"
        assert replied(await ann.request(change("contact_cancel", users.bob))) == {"event": "cancelled", "user": users.bob}
        assert await pushed(bob) == {"event": "cancelled", "user": users.ann}
        assert await lists(bob) == await lists(ann) == NOTHING

        await befriend(ann, bob)
        assert replied(await ann.request(change("contact_remove", users.bob))) == {"event": "removed", "user": users.bob}
        assert [(await pushed(bob))["event"] for _ in range(2)] == ["request_received", "removed"]
        phone = [(await pushed(ann_phone))["event"] for _ in range(6)]
        assert phone == ["request_sent", "declined", "request_sent", "cancelled", "request_sent", "accepted"]
        assert await pushed(ann_phone) == {"event": "removed", "user": users.bob}
        assert await lists(ann) == await lists(bob) == NOTHING


async def test_each_refusal_has_its_code_and_changes_nothing(stack, users) -> None:
    async with (
        await connect(stack, users.ann) as ann, await connect(stack, users.bob) as bob, await connect(stack, users.cal) as cal,
    ):
        for op in CHANGE_OPS:
            await refused(ann.request(change(op, users.ann)), "bad_frame")
        await refused(ann.request(change("contact_request", users.bob, note="x" * 501)), "bad_frame")
        for op in ("contact_accept", "contact_decline", "contact_cancel", "contact_remove", "unblock"):
            await refused(ann.request(change(op, users.bob)), "not_found")
        assert await lists(ann) == await lists(bob) == NOTHING

        await ann.request(change("contact_request", users.bob))
        before = await lists(ann), await lists(bob)
        await refused(ann.request(change("contact_request", users.bob)), "conflict")  # pending
        for op in ("contact_accept", "contact_decline"):  # the request is ann's, not bob's
            await refused(ann.request(change(op, users.bob)), "not_found")
        await refused(bob.request(change("contact_cancel", users.ann)), "not_found")
        assert (await lists(ann), await lists(bob)) == before

        await bob.request(change("contact_accept", users.ann))
        before = await lists(ann), await lists(bob)
        await refused(ann.request(change("contact_request", users.bob)), "conflict")  # contacts already
        await refused(bob.request(change("contact_request", users.ann)), "conflict")
        await refused(bob.request(change("contact_accept", users.ann)), "not_found")  # nothing left to accept
        assert (await lists(ann), await lists(bob)) == before

        await ann.request(change("block", users.cal))
        before = await lists(ann), await lists(cal)
        await refused(ann.request(change("block", users.cal)), "conflict")
        await refused(cal.request(change("contact_request", users.ann)), "blocked")  # the blocked one asks
        await refused(ann.request(change("contact_request", users.cal)), "blocked")  # the blocker asks
        assert (await lists(ann), await lists(cal)) == before
        assert [b["user"] for b in before[0][2]] == [users.cal]


async def test_a_block_ends_everything_silently_and_stops_sends_on_every_gateway(stack, users) -> None:
    async with (
        await connect(stack, users.ann) as ann, await connect(stack, users.ann, gateway=1) as ann_phone,
        await connect(stack, users.bob, gateway=1) as bob, await connect(stack, users.cal, gateway=1) as cal,
    ):
        await befriend(ann, bob)
        await cal.request(change("contact_request", users.ann))
        before = await bob.send_text(users.ann, "before the block", cmid="first")

        blocked = await ann.request(change("block", users.bob))  # on gateway 0
        await refused(bob.send_text(users.ann, "let me in"), "blocked")  # on gateway 1, right after the reply
        # a resend of what was stored before the block is no new message: its first answer
        again = await bob.send_text(users.ann, "before the block", cmid="first")
        assert (again["mid"], again["seq"]) == (before["mid"], before["seq"])
        await refused(ann_phone.send_text(users.bob, "nor me"), "blocked")
        await refused(ann.send_text(users.bob, "nor me"), "blocked")
        assert replied(blocked) == {"event": "blocked", "user": users.bob, "at_ms": blocked["at_ms"]}
        phone = [await pushed(ann_phone) for _ in range(4)]
        assert [p["event"] for p in phone] == ["request_sent", "accepted", "request_received", "blocked"]
        assert phone[3] == replied(blocked)
        await ann.request(change("block", users.cal))
        assert await lists(bob) == await lists(cal) == NOTHING
        assert [u["user"] for u in (await lists(ann))[2]] == sorted([users.bob, users.cal])
        assert (await lists(ann))[:2] == NOTHING[:2]

        conversation = direct_conversation(users.ann, users.bob)
        seen = [(m["seq"], m["body"]["text"]) for m in (await ann.history(conversation))["messages"]]
        assert seen == [(before["seq"], "before the block")], "history stays; the refused sends appear nowhere"
        assert [m["body"]["text"] for m in (await ann.sync())["messages"] if m["sender"] == users.bob] == ["before the block"]

        assert replied(await ann.request(change("unblock", users.bob))) == {"event": "unblocked", "user": users.bob}
        assert [(await pushed(ann_phone))["event"] for _ in range(2)] == ["blocked", "unblocked"]  # cal, bob
        assert (await lists(ann))[0] == [], "unblocking restores no contact"
        assert (await bob.send_text(users.ann, "hello again"))["seq"] == before["seq"] + 1
        await ann.request(change("contact_request", users.bob))
        # bob's contact pushes: ann's first request, then her new one; nothing of the block or the unblock
        assert [(await pushed(bob))["event"] for _ in range(2)] == ["request_received", "request_received"]


async def test_contacts_only_takes_contacts_and_answers_to_those_written_first(stack, users) -> None:
    async with (
        await connect(stack, users.ann) as ann, await connect(stack, users.bob) as bob,
        await connect(stack, users.cal, gateway=1) as cal, await connect(stack, users.dan, gateway=1) as dan,
    ):
        await befriend(bob, ann)
        assert (await ann.request({"op": "set_privacy", "dm": "contacts"}))["dm"] == "contacts"
        await refused(cal.send_text(users.ann, "hi stranger"), "contacts_only")
        assert (await bob.send_text(users.ann, "hi friend"))["seq"] == 1
        assert (await ann.send_text(users.dan, "hi dan, Ann here"))["seq"] == 1
        assert (await dan.send_text(users.ann, "hi Ann"))["seq"] == 2, "a reply to someone she wrote to first passes"
        await refused(cal.send_text(users.ann, "still a stranger"), "contacts_only")
        await bob.request(change("contact_remove", users.ann))
        await refused(bob.send_text(users.ann, "no longer a contact"), "contacts_only")
        assert [m["body"]["text"] for m in (await ann.sync())["messages"] if m["sender"] != users.ann] == ["hi Ann", "hi friend"]


async def test_neither_adds_the_other_to_a_group_while_one_blocks(stack, users) -> None:
    async with (
        await connect(stack, users.ann) as ann, await connect(stack, users.bob) as bob, await connect(stack, users.cal) as cal,
    ):
        await ann.request(change("block", users.bob))
        await refused(ann.request({"op": "create_group", "name": "g", "members": [users.cal, users.bob]}), "blocked")
        await refused(bob.request({"op": "create_group", "name": "g", "members": [users.ann]}), "blocked")
        assert (await ann.request({"op": "my_groups"}))["groups"] == (await bob.request({"op": "my_groups"}))["groups"] == []

        group = await cal.request({"op": "create_group", "name": "g", "members": [users.ann]})
        await cal.request({"op": "set_role", "gid": group["gid"], "user": users.ann, "role": "admin"})
        await refused(ann.request({"op": "add_members", "gid": group["gid"], "users": [users.dan, users.bob]}), "blocked")
        members = (await cal.request({"op": "group_members", "gid": group["gid"]}))["members"]
        assert members == {users.cal: "owner", users.ann: "admin"}, "nobody was added"
        added = await cal.request({"op": "add_members", "gid": group["gid"], "users": [users.bob]})
        assert added["added"] == [users.bob], "a group is a shared space: others may add both"
        sent = await bob.send({"conversation": group["conversation"], "body": {"text": "hi all"}})
        assert (await ann.next_message())["message"]["seq"] == sent["seq"], "group messages are not filtered"


# -- the service, on fakeredis and the real redis-server


def services_of(redis, **values) -> Services:
    return Services(Settings(_env_file=None, topic_partitions=1, **{"accounts": "open", **values}), redis)


async def account(redis, user: str, status: str = "active", dm: str = "anyone") -> None:
    """An account hash as core/accounts.py leaves it (only the fields the checks read)."""
    await redis.hset(keys.account(user), mapping={"status": status, "dm": dm})


async def refuses(call, code: ErrorCode) -> None:
    with pytest.raises(ImflowError) as error:
        await call
    assert error.value.code == code, error.value.message


async def graph(redis, users: list[str]) -> dict:
    """Every user's contacts, requests both ways and blocks, as stored."""
    out = {}
    for user in users:
        incoming, outgoing = await store.requests_of(redis, user)
        out[user] = (await store.contacts_of(redis, user), incoming, outgoing, await store.blocked_by(redis, user))
    return out


async def test_registered_accounts_refuse_unknown_and_deactivated_users(any_redis) -> None:
    services = services_of(any_redis, accounts="registered")
    for user in ("ann", "bob"):
        await account(any_redis, user)
    await account(any_redis, "old", status="deactivated")
    before = await graph(any_redis, ["ann", "bob", "old"])
    await refuses(contacts.request(services, contacts.Request("ann", "old")), ErrorCode.USER_DEACTIVATED)
    await refuses(contacts.block(services, contacts.Block("ann", "old")), ErrorCode.USER_DEACTIVATED)
    await refuses(contacts.request(services, contacts.Request("ann", "nobody")), ErrorCode.NOT_FOUND)
    await refuses(contacts.block(services, contacts.Block("ann", "nobody")), ErrorCode.NOT_FOUND)
    await refuses(contacts.check_direct(services, "ann", "nobody"), ErrorCode.NOT_FOUND)
    await refuses(contacts.check_direct(services, "ann", "old"), ErrorCode.USER_DEACTIVATED)
    await refuses(groups.create(services, groups.CreateGroup("ann", "g", ("bob", "nobody"), gid="g1")), ErrorCode.NOT_FOUND)
    await refuses(groups.create(services, groups.CreateGroup("ann", "g", ("old",), gid="g1")), ErrorCode.USER_DEACTIVATED)
    await groups.create(services, groups.CreateGroup("ann", "g", ("bob",), gid="g1"))  # the gid was not taken
    await refuses(groups.add(services, groups.AddMembers("ann", "g1", ("nobody",))), ErrorCode.NOT_FOUND)
    await refuses(groups.add(services, groups.AddMembers("ann", "g1", ("old",))), ErrorCode.USER_DEACTIVATED)
    assert (await groups.members(services, groups.ListMembers("ann", "g1"))).members == {"ann": "owner", "bob": "member"}
    assert await graph(any_redis, ["ann", "bob", "old"]) == before
    await contacts.check_direct(services, "ann", "bob")  # an active account takes messages

    # a request pending from someone deactivated since: it can be declined, not accepted
    await contacts.request(services, contacts.Request("bob", "ann"))
    await account(any_redis, "bob", status="deactivated")
    await refuses(contacts.accept(services, contacts.Accept("ann", "bob")), ErrorCode.USER_DEACTIVATED)
    await contacts.decline(services, contacts.Decline("ann", "bob"))


async def test_open_accounts_take_users_without_one(any_redis) -> None:
    services = services_of(any_redis)
    await contacts.request(services, contacts.Request("ann", "newcomer"))
    await contacts.check_direct(services, "ann", "newcomer")
    assert (await contacts.requests(services, contacts.ListRequests("newcomer"))).incoming[0].user == "ann"


async def test_limits_are_forbidden_and_change_nothing(any_redis) -> None:
    services = services_of(any_redis, contacts_max=1, contact_requests_max=1, blocked_max=1)
    await contacts.request(services, contacts.Request("ann", "bob"))
    await refuses(contacts.request(services, contacts.Request("ann", "cal")), ErrorCode.FORBIDDEN)  # ann's outgoing
    await refuses(contacts.request(services, contacts.Request("cal", "bob")), ErrorCode.FORBIDDEN)  # bob's incoming
    await contacts.accept(services, contacts.Accept("bob", "ann"))
    await contacts.request(services, contacts.Request("cal", "ann"))
    await refuses(contacts.accept(services, contacts.Accept("ann", "cal")), ErrorCode.FORBIDDEN)  # ann's contacts
    await contacts.block(services, contacts.Block("dan", "eve"))
    await refuses(contacts.block(services, contacts.Block("dan", "fay")), ErrorCode.FORBIDDEN)
    stored = await graph(any_redis, ["ann", "bob", "cal", "dan"])
    assert stored["ann"][:3] == ({"bob": stored["ann"][0]["bob"]}, {"cal": stored["ann"][1]["cal"]}, {})
    assert stored["dan"][3].keys() == {"eve"}


async def test_every_change_is_recorded_in_the_archive(any_redis) -> None:
    services = services_of(any_redis)
    services.clock = lambda: 1000
    await contacts.request(services, contacts.Request("ann", "bob", note="hi"))
    await contacts.accept(services, contacts.Accept("bob", "ann"))
    await contacts.request(services, contacts.Request("cal", "ann"))
    await contacts.decline(services, contacts.Decline("ann", "cal"))
    await contacts.request(services, contacts.Request("ann", "cal"))
    await contacts.cancel(services, contacts.Cancel("ann", "cal"))
    await contacts.remove(services, contacts.Remove("ann", "bob"))
    await contacts.request(services, contacts.Request("ann", "bob"))
    await contacts.accept(services, contacts.Accept("bob", "ann"))
    await contacts.request(services, contacts.Request("dan", "ann"))
    await contacts.block(services, contacts.Block("ann", "bob"))  # ends the edge: recorded as removed
    await contacts.block(services, contacts.Block("ann", "dan"))  # ends dan's request: declined
    await contacts.unblock(services, contacts.Unblock("ann", "bob"))
    rows: dict[str, list] = {social_records.CONTACT_EVENTS: [], social_records.BLOCK_EVENTS: []}
    for raw in await any_redis.lrange(keys.archive_pending(services.settings.app_id, 0), 0, -1):
        record = orjson.loads(raw)
        if record["table"] in rows:
            rows[record["table"]] += record["rows"]
    assert [(r["user"], r["peer"], r["kind"], r["note"]) for r in rows[social_records.CONTACT_EVENTS]] == [
        ("ann", "bob", "requested", "hi"), ("bob", "ann", "accepted", ""),
        ("cal", "ann", "requested", ""), ("ann", "cal", "declined", ""),
        ("ann", "cal", "requested", ""), ("ann", "cal", "cancelled", ""),
        ("ann", "bob", "removed", ""),
        ("ann", "bob", "requested", ""), ("bob", "ann", "accepted", ""),
        ("dan", "ann", "requested", ""),
        ("ann", "bob", "removed", ""), ("ann", "dan", "declined", ""),
    ]
    assert [(r["user"], r["peer"], r["kind"], r["at_ms"]) for r in rows[social_records.BLOCK_EVENTS]] == [
        ("ann", "bob", "blocked", 1000), ("ann", "dan", "blocked", 1000), ("ann", "bob", "unblocked", 1000),
    ]


async def test_a_retry_completes_a_change_cut_half_way(any_redis) -> None:
    """Each change writes the other user's side first: a crash before the actor's side leaves
    the actor's side as it was, and the actor's retry does the whole change again."""
    services, redis = services_of(any_redis), any_redis
    await contacts.request(services, contacts.Request("bob", "ann"))
    await store.link(redis, "bob", "ann", 5)  # ann's accept, cut after bob's side
    assert (await contacts.accept(services, contacts.Accept("ann", "bob"))).since_ms == 5
    assert await store.contacts_of(redis, "ann") == {"bob": 5} and await store.contacts_of(redis, "bob") == {"ann": 5}
    assert await store.requests_of(redis, "ann") == await store.requests_of(redis, "bob") == ({}, {})

    await store.link(redis, "cal", "ann", 7)  # the edge on cal's side only: accepting completes it
    assert (await contacts.accept(services, contacts.Accept("cal", "ann"))).since_ms == 7
    assert (await store.contacts_of(redis, "ann"))["cal"] == 7

    await store.unlink(redis, "bob", "ann", "contact")  # ann's removal, cut after bob's side
    assert (await contacts.remove(services, contacts.Remove("ann", "bob"))).event == "removed"
    assert await store.contacts_of(redis, "bob") == {} and await store.contacts_of(redis, "ann") == {"cal": 7}

    await store.unlink(redis, "ann", "cal", "contact", "in", "out", "wrote_to")  # cal's block, cut likewise
    assert (await contacts.block(services, contacts.Block("cal", "ann"))).event == "blocked"
    stored = await graph(redis, ["ann", "cal"])
    assert stored["ann"] == ({}, {}, {}, {}) and stored["cal"][:3] == ({}, {}, {}) and stored["cal"][3].keys() == {"ann"}

    # a request against a removal cut half-way (or in flight) finishes the removal: it asks,
    # it does not re-make the contact the other ended
    await contacts.request(services, contacts.Request("dan", "ann"))
    await contacts.accept(services, contacts.Accept("ann", "dan"))
    await store.unlink(redis, "dan", "ann", "contact")  # ann's removal of dan, cut after dan's side
    assert (await contacts.request(services, contacts.Request("dan", "ann"))).event == "request_sent"
    assert "dan" not in await store.contacts_of(redis, "ann") and await store.contacts_of(redis, "dan") == {}
    assert (await store.requests_of(redis, "ann"))[0].keys() == {"dan"}  # ann's incoming: dan asks


async def test_contacts_only_at_the_service_level(any_redis) -> None:
    """The send check's rule 4 and the first-message mark, with the privacy setting stored as
    core/accounts.py stores it."""
    services = services_of(any_redis)
    await account(any_redis, "ann", dm="contacts")
    await refuses(contacts.check_direct(services, "cal", "ann"), ErrorCode.CONTACTS_ONLY)
    await contacts.check_direct(services, "ann", "cal")  # ann writes first: cal may answer
    await contacts.check_direct(services, "cal", "ann")
    await contacts.request(services, contacts.Request("bob", "ann"))
    await refuses(contacts.check_direct(services, "bob", "ann"), ErrorCode.CONTACTS_ONLY)  # a request is not a contact
    await contacts.accept(services, contacts.Accept("ann", "bob"))
    await contacts.check_direct(services, "bob", "ann")
    await contacts.block(services, contacts.Block("dan", "ann"))
    await refuses(contacts.check_direct(services, "ann", "dan"), ErrorCode.BLOCKED)
    await contacts.unblock(services, contacts.Unblock("dan", "ann"))
    # ann's refused send to dan took its first-message mark back: dan may not start with her
    await refuses(contacts.check_direct(services, "dan", "ann"), ErrorCode.CONTACTS_ONLY)
    # a first message counts whatever the writer's privacy was then: eve wrote to fay, then took
    # contacts only; fay may answer
    await contacts.check_direct(services, "eve", "fay")
    await account(any_redis, "eve", dm="contacts")
    await contacts.check_direct(services, "fay", "eve")


# -- property: random sequences among four users against a small model


PEOPLE = ("u0", "u1", "u2", "u3")
CHANGES = ("request", "accept", "decline", "cancel", "remove", "block", "unblock")


@dataclass
class Model:
    """What the social graph should be: contact pairs, requests (asker, asked), blocks
    (blocker, blocked), privacy, first-message marks (writer, written to)."""

    contacts: set[frozenset[str]] = field(default_factory=set)
    requests: set[tuple[str, str]] = field(default_factory=set)
    blocks: set[tuple[str, str]] = field(default_factory=set)
    contacts_only: set[str] = field(default_factory=set)
    wrote: set[tuple[str, str]] = field(default_factory=set)

    def change(self, op: str, a: str, b: str) -> str:
        """The event of ``a``'s change concerning ``b``, or the refusal's error code."""
        pair, blocked = frozenset((a, b)), (a, b) in self.blocks or (b, a) in self.blocks
        if a == b:
            return "bad_frame"
        if op == "request":
            if blocked:
                return "blocked"
            if pair in self.contacts or (a, b) in self.requests:
                return "conflict"
            if (b, a) in self.requests:
                self.requests.discard((b, a))
                self.contacts.add(pair)
                return "accepted"
            self.requests.add((a, b))
            return "request_sent"
        if op in ("accept", "decline"):
            if (b, a) not in self.requests:
                return "not_found"
            self.requests.discard((b, a))
            if op == "accept":
                self.contacts.add(pair)
            return "accepted" if op == "accept" else "declined"
        if op == "cancel":
            if (a, b) not in self.requests:
                return "not_found"
            self.requests.discard((a, b))
            return "cancelled"
        if op == "remove":
            if pair not in self.contacts:
                return "not_found"
            self.contacts.discard(pair)
            return "removed"
        if op == "block":
            if (a, b) in self.blocks:
                return "conflict"
            self.blocks.add((a, b))
            self.contacts.discard(pair)
            self.requests -= {(a, b), (b, a)}
            self.wrote -= {(a, b), (b, a)}
            return "blocked"
        assert op == "unblock"
        if (a, b) not in self.blocks:
            return "not_found"
        self.blocks.discard((a, b))
        return "unblocked"

    def existing(self, op: str, index: int) -> tuple[str, str]:
        """(actor, peer) of a change ``op`` that has something to act on now, if anything does."""
        if op in ("accept", "decline", "request"):  # a request back is an acceptance
            found = [(asked, asker) for asker, asked in self.requests]
        elif op == "remove":
            found = [tuple(sorted(pair)) for pair in self.contacts]
        elif op == "block":  # a block that ends something, from either side
            ends = [*(tuple(sorted(pair)) for pair in self.contacts), *self.requests]
            found = [(a, b) if index % 2 else (b, a) for a, b in ends]
        else:
            found = list(self.requests if op == "cancel" else self.blocks)
        return sorted(found)[index % len(found)] if found else PAIRS[index % len(PAIRS)]

    def send(self, sender: str, recipient: str) -> str:
        """The verdict of the one-to-one send check, and the mark a passing send leaves."""
        if (sender, recipient) in self.blocks or (recipient, sender) in self.blocks:
            return "blocked"
        contact = frozenset((sender, recipient)) in self.contacts
        if recipient in self.contacts_only and not contact and (recipient, sender) not in self.wrote:
            return "contacts_only"
        if not contact:  # whatever the sender's privacy now: it may change
            self.wrote.add((sender, recipient))
        return "ok"


PAIRS = [(a, b) for a in PEOPLE for b in PEOPLE if a != b]
CHANGE = st.builds(lambda op, pair: (op, *pair), st.sampled_from(CHANGES), st.sampled_from(PAIRS))
STEP = st.one_of(
    CHANGE, CHANGE, CHANGE, CHANGE,  # mostly changes between two users, so that requests meet answers
    st.builds(lambda pair: ("send", *pair), st.sampled_from(PAIRS)),
    st.tuples(st.just("privacy"), st.sampled_from(PEOPLE), st.sampled_from(("anyone", "contacts"))),
    st.builds(lambda op, user: (op, user, user), st.sampled_from(CHANGES), st.sampled_from(PEOPLE)),  # oneself
    # an answer to what exists now (a pending request, an edge, a block): random pairs rarely meet one
    st.tuples(st.sampled_from(CHANGES), st.just("existing"), st.integers(0, 11))
    .map(lambda step: (step[0], "", "existing", step[2])),
)
COMMANDS = {
    "request": (contacts.request, contacts.Request), "accept": (contacts.accept, contacts.Accept),
    "decline": (contacts.decline, contacts.Decline), "cancel": (contacts.cancel, contacts.Cancel),
    "remove": (contacts.remove, contacts.Remove), "block": (contacts.block, contacts.Block),
    "unblock": (contacts.unblock, contacts.Unblock),
}


async def run_steps(redis_url: str, steps: list[tuple[str, str, str]]) -> None:
    redis = redis_client.connect(redis_url)
    try:
        await redis_client.flush(redis)
        services, model = services_of(redis), Model()
        for step, (op, a, b, *c) in enumerate(steps):
            if op == "privacy":  # stored as core/accounts.py stores it (set_privacy)
                await redis.hset(keys.account(a), "dm", b)
                (model.contacts_only.add if b == "contacts" else model.contacts_only.discard)(a)
                continue
            if op == "send":
                expected, service, command = model.send(a, b), contacts.check_direct, (a, b)
            else:
                if b == "existing":
                    a, b = model.existing(op, c[0])
                expected = model.change(op, a, b)
                service, make = COMMANDS[op]
                command = (make(a, b),)
            try:
                result = await service(services, *command)
                got = "ok" if result is None or isinstance(result, bool) else result.event  # check_direct: a bool
            except ImflowError as error:
                got = str(error.code)
            assert got == expected, f"step {step}: {op} {a} -> {b}"
            await agrees(redis, model)
    finally:
        await redis.aclose()


async def agrees(redis, model: Model) -> None:
    """Redis holds the model's graph, which is consistent."""
    stored = await graph(redis, list(PEOPLE))
    for a in PEOPLE:
        edges, incoming, outgoing, blocked = stored[a]
        assert set(edges) == {b for b in PEOPLE if frozenset((a, b)) in model.contacts}
        assert set(outgoing) == {b for b in PEOPLE if (a, b) in model.requests}
        assert set(incoming) == {b for b in PEOPLE if (b, a) in model.requests}
        assert set(blocked) == {b for b in PEOPLE if (a, b) in model.blocks}
    consistent(stored)


def consistent(stored: dict) -> None:
    """Both sides agree on every edge and every request, and no request coexists with a contact
    edge or a block (``stored``: ``graph``'s answer for every user involved)."""
    for a, (edges, incoming, outgoing, blocked) in stored.items():
        assert all(stored[b][0].get(a) == since for b, since in edges.items()), f"the two sides of {a}'s edges agree"
        assert all(a in stored[b][1] for b in outgoing) and all(a in stored[b][2] for b in incoming), "and of requests"
        assert not (incoming.keys() | outgoing.keys()) & edges.keys(), f"{a}: a request between contacts"
        blocking = blocked.keys() | {b for b in stored if a in stored[b][3]}
        assert not (incoming.keys() | outgoing.keys() | edges.keys()) & blocking, f"{a}: a request or an edge beside a block"


@pytest.mark.redis
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=20, max_size=60))
def test_any_sequence_keeps_both_sides_in_agreement_with_the_model(redis_url: str, steps) -> None:
    asyncio.run(run_steps(redis_url, steps))


@pytest.mark.redis
async def test_changes_racing_each_other_leave_the_two_sides_consistent(real_redis, redis_url: str) -> None:
    """Crossed requests, and a request or an acceptance racing a block (of either user), many at
    once on the real Redis (64 connections): whatever the interleaving, no request or edge is
    left beside a block, and the two sides agree."""
    redis = redis_client.connect(redis_url, max_connections=64)
    services = services_of(redis)
    kinds = [
        lambda a, b: [contacts.block(services, contacts.Block(a, b)), contacts.request(services, contacts.Request(b, a))],
        lambda a, b: [contacts.block(services, contacts.Block(a, b)), contacts.accept(services, contacts.Accept(b, a))],
        lambda a, b: [contacts.request(services, contacts.Request(a, b)), contacts.request(services, contacts.Request(b, a))],
        lambda a, b: [contacts.block(services, contacts.Block(b, a)), contacts.accept(services, contacts.Accept(b, a))],
        # a removal racing the removed one's new request: never a contact on one side only
        lambda a, b: [contacts.remove(services, contacts.Remove(a, b)), contacts.request(services, contacts.Request(b, a))],
    ]

    async def race(i: int) -> None:
        a, b, kind = f"a{i}", f"b{i}", i % len(kinds)
        if kind in (1, 3, 4):  # something to accept, or to remove
            await contacts.request(services, contacts.Request(a, b))
        if kind == 4:
            await contacts.accept(services, contacts.Accept(b, a))
        for outcome in await asyncio.gather(*kinds[kind](a, b), return_exceptions=True):
            # a block first refuses the other change, or leaves it nothing to accept; a request
            # before the removal began finds a contact
            codes = (ErrorCode.BLOCKED, ErrorCode.NOT_FOUND, ErrorCode.CONFLICT)
            refused = isinstance(outcome, ImflowError) and outcome.code in codes
            assert refused or not isinstance(outcome, BaseException), outcome

    try:
        await asyncio.gather(*(race(i) for i in range(200)))
        stored = await graph(redis, [f"{side}{i}" for i in range(200) for side in "ab"])
    finally:
        await redis.aclose()
    consistent(stored)
    assert all(stored[f"a{i}"][0].keys() == {f"b{i}"} for i in range(2, 200, 5)), "crossed requests make contacts"


async def test_a_send_a_plugin_refuses_leaves_no_first_message_mark(any_redis) -> None:
    """The check marks a first message before the plugins see it; if one refuses, the message
    does not go, and its recipient may not answer a contacts-only sender on its account."""
    from imflow.core import message_types, sending
    from imflow.core.hookspecs import hookimpl
    from imflow.core.plugin_calls import Hooks, empty_manager
    from imflow.core.plugin_types import Rejection

    class Refuses:
        @hookimpl
        def imflow_before_send(self, command):
            return Rejection("test.refused", "not this one") if command.body["text"] == "no" else None

    manager = empty_manager()
    manager.register(Refuses(), "refuses")
    services = services_of(any_redis)
    services.hooks = Hooks(manager)
    await account(any_redis, "ann", dm="contacts")
    types = {"text": message_types.TEXT}

    def draft(sender: str, recipient: str, text: str) -> sending.Draft:
        return sending.Draft(sender, direct_conversation(sender, recipient), f"c-{text}", "text", {"text": text})

    with pytest.raises(ImflowError) as error:
        await sending.prepare(services, draft("ann", "cal", "no"), types)
    assert error.value.code == "test.refused"
    await refuses(contacts.check_direct(services, "cal", "ann"), ErrorCode.CONTACTS_ONLY)
    await sending.prepare(services, draft("ann", "cal", "yes"), types)  # this one goes: cal may answer
    await contacts.check_direct(services, "cal", "ann")
