"""Group chat (small groups, write fan-out) on both stacks: roles, membership, fan-out, history."""

from __future__ import annotations


from imflow.client import Client, ClientError
from imflow.testing import UNCHANGED_SETTINGS

from stacks import connect, refused


async def test_every_member_gets_every_group_message_in_order(stack, users) -> None:
    names = [users.ann, users.ben, users.cat, users.dan]
    clients: list[Client] = []
    try:
        for i, name in enumerate(names):
            clients.append(await connect(stack, name, gateway=i))
        ann = clients[0]
        group = await ann.request({"op": "create_group", "name": "team", "members": names[1:]})
        assert group["members"] == {names[0]: "owner", **{n: "member" for n in names[1:]}}
        conversation = group["conversation"]
        sent = [await ann.send({"conversation": conversation, "body": {"text": f"m{i}"}}) for i in range(5)]
        sent.append(await clients[2].send({"conversation": conversation, "body": {"text": "from cat"}}))
        assert [s["seq"] for s in sent] == [1, 2, 3, 4, 5, 6]
        for client in clients[1:]:
            got = []
            while len(got) < (6 if client is not clients[2] else 5):
                got.append((await client.next_message())["message"]["seq"])
            assert got == ([1, 2, 3, 4, 5, 6] if client is not clients[2] else [1, 2, 3, 4, 5])
        state = await clients[1].sync()
        assert state["conversations"] == [{"conversation": conversation, "last_seq": 6, "read_seq": 0, "unread": 6, **UNCHANGED_SETTINGS}]
        assert (await clients[2].sync())["conversations"][0]["unread"] == 0, "cat read up to her own message"
        mine = await clients[3].request({"op": "my_groups"})
        assert mine["groups"] == [{"gid": group["gid"], "conversation": conversation, "name": "team", "role": "member"}]
    finally:
        for client in clients:
            await client.close()


async def test_roles_decide_who_may_change_the_group(stack, users) -> None:
    async with await connect(stack, users.owner) as owner, await connect(stack, users.adam) as adam, await connect(stack, users.mia) as mia:
        gid = (await owner.request({"op": "create_group", "name": "club", "members": [users.adam, users.mia]}))["gid"]
        await refused(mia.request({"op": "add_members", "gid": gid, "users": [users.zed]}), "forbidden")
        await refused(adam.request({"op": "set_role", "gid": gid, "user": users.mia, "role": "admin"}), "forbidden")
        assert (await owner.request({"op": "set_role", "gid": gid, "user": users.adam, "role": "admin"}))["role"] == "admin"
        assert (await adam.request({"op": "add_members", "gid": gid, "users": [users.zed, users.mia]}))["added"] == [users.zed]
        await refused(adam.request({"op": "remove_member", "gid": gid, "user": users.owner}), "forbidden")
        assert (await adam.request({"op": "remove_member", "gid": gid, "user": users.zed}))["user"] == users.zed
        await refused(owner.request({"op": "leave_group", "gid": gid}), "forbidden")
        await owner.request({"op": "set_role", "gid": gid, "user": users.adam, "role": "owner"})
        members = (await mia.request({"op": "group_members", "gid": gid}))["members"]
        assert members == {users.owner: "admin", users.adam: "owner", users.mia: "member"}
        assert (await owner.request({"op": "leave_group", "gid": gid}))["op"] == "left"
        await refused(owner.request({"op": "group_members", "gid": gid}), "not_found")
        for op in ({"op": "add_members", "users": [users.owner]}, {"op": "leave_group"},
                   {"op": "set_role", "user": users.mia, "role": "admin"}, {"op": "remove_member", "user": users.mia}):
            await refused(owner.request({**op, "gid": gid}), "not_found")  # no longer in it: nothing to see


async def test_removed_members_stop_receiving_and_are_refused(stack, users) -> None:
    async with await connect(stack, users.ann) as ann, await connect(stack, users.bob) as bob, await connect(stack, users.eve) as eve:
        group = await ann.request({"op": "create_group", "name": "g", "members": [users.bob, users.eve]})
        conversation, gid = group["conversation"], group["gid"]
        await ann.send({"conversation": conversation, "body": {"text": "before"}})
        assert (await eve.next_message())["message"]["body"]["text"] == "before"
        await ann.request({"op": "remove_member", "gid": gid, "user": users.eve})
        await ann.send({"conversation": conversation, "body": {"text": "after"}})
        assert (await bob.next_message())["message"]["seq"] == 1
        assert (await bob.next_message())["message"]["body"]["text"] == "after"
        await refused(eve.send({"conversation": conversation, "body": {"text": "let me back"}}), "forbidden")
        await refused(eve.history(conversation), "not_found")
        assert (await eve.sync())["messages"] == [], "nothing after the removal reached her, and the group's left her inbox"


async def test_late_joiners_see_only_what_comes_after(stack, users) -> None:
    async with await connect(stack, users.ann) as ann, await connect(stack, users.kim) as kim:
        group = await ann.request({"op": "create_group", "name": "g", "members": []})
        for i in range(3):
            await ann.send({"conversation": group["conversation"], "body": {"text": f"early {i}"}})
        await ann.request({"op": "add_members", "gid": group["gid"], "users": [users.kim]})
        await ann.send({"conversation": group["conversation"], "body": {"text": "welcome"}})
        assert (await kim.next_message())["message"]["seq"] == 4
        page = await kim.history(group["conversation"])
        assert [m["seq"] for m in page["messages"]] == [4] and page["next_before_seq"] is None
        assert [m["seq"] for m in (await ann.history(group["conversation"]))["messages"]] == [4, 3, 2, 1]


async def test_a_group_red_packet_is_shared_by_the_fastest(stack, users) -> None:
    names = [users.p0, users.p1, users.p2, users.p3, users.p4]
    clients: list[Client] = []
    try:
        for name in names:
            clients.append(await connect(stack, name))
        group = await clients[0].request({"op": "create_group", "name": "lucky", "members": names[1:]})
        sent = await clients[0].send({"conversation": group["conversation"], "type": "red_packet",
                                      "body": {"total_cents": 1000, "count": 3, "greeting": "go"}})
        for client in clients[1:]:
            assert (await client.next_message())["message"]["type"] == "red_packet"
        shares, empty = [], 0
        for client in clients[1:]:
            try:
                reply = await client.request({"op": "red_packet.grab", "conversation": group["conversation"], "mid": sent["mid"]})
                shares.append(reply["share_cents"])
            except ClientError as error:
                assert error.code == "red_packet.empty"
                empty += 1
        assert len(shares) == 3 and empty == 1 and sum(shares) == 1000 and min(shares) >= 1
    finally:
        for client in clients:
            await client.close()


async def test_membership_changes_are_recorded_in_the_archive(imflow_server) -> None:
    from imflow.analytics import Archive
    from imflow.testing import eventually

    async with imflow_server() as server:
        async with await server.client("ann") as ann:
            gid = (await ann.request({"op": "create_group", "name": "g", "members": ["bob"]}))["gid"]
            await ann.request({"op": "add_members", "gid": gid, "users": ["cat"]})
            await ann.request({"op": "set_role", "gid": gid, "user": "bob", "role": "admin"})
            await ann.request({"op": "remove_member", "gid": gid, "user": "cat"})

            async def recorded():
                with Archive(server.settings.archive_dir) as archive:
                    if "im_group_events" not in archive.tables():
                        return None
                    rows = archive.sql(f"SELECT user, kind, role FROM im_group_events WHERE gid = '{gid}' ORDER BY at_ms, user").fetchall()
                    return rows if len(rows) == 5 else None

            rows = await eventually(recorded, timeout=10, interval=0.2)
    assert sorted(rows) == sorted([("ann", "joined", "owner"), ("bob", "joined", "member"), ("cat", "joined", "member"),
                                   ("bob", "role", "admin"), ("cat", "removed", "")])
