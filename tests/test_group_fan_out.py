"""Big groups through real gateways on both stacks: read fan-out, group unread, mode switches,
and groups over HTTP. The real stack runs a 10,000-member group; the embedded one (fakeredis
in the server process) the same test at 300 members. The stacks switch to read fan-out at
tests/stacks.py's READ_FAN_OUT_THRESHOLD members and flush group unread every second."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from imflow.client import Client, ClientError
from imflow.testing import UNCHANGED_SETTINGS, eventually

from imflow.core.storage import keys, redis_client
from stacks import READ_FAN_OUT_THRESHOLD, connect


async def received(client: Client, count: int, conversation: str) -> list[int]:
    """The seqs of the next ``count`` pushed messages of a conversation, then proof of no more."""
    seqs = []
    while len(seqs) < count:
        push = await client.next_message()
        if push["message"]["conversation"] == conversation:
            seqs.append(push["message"]["seq"])
    with pytest.raises(asyncio.TimeoutError):
        await client.next_message(timeout=0.5)
    return seqs


async def add_in_pages(owner: Client, gid: str, users: list[str]) -> None:
    for start in range(0, len(users), 1000):
        await owner.request({"op": "add_members", "gid": gid, "users": users[start : start + 1000]}, timeout=60)


async def test_a_big_group_reaches_every_online_member_once_and_counts_right(stack, users) -> None:
    size = 10_000 if stack.kind == "real" else 300
    everyone = [getattr(users, f"m{i:05d}") for i in range(size)]
    owner_name, poster_name, offline_name = everyone[0], everyone[1], everyone[size // 2]
    online_names = everyone[:6]
    online: list[Client] = []
    try:
        for i, name in enumerate(online_names):
            online.append(await connect(stack, name, gateway=i))
        owner, poster = online[0], online[1]
        group = await owner.request({"op": "create_group", "name": "town", "members": everyone[1:1000]})
        gid, conversation = group["gid"], group["conversation"]
        await add_in_pages(owner, gid, everyone[1000:])
        assert len((await owner.request({"op": "group_members", "gid": gid}, timeout=30))["members"]) == size

        sent = []
        for i in range(12):
            author = poster if i % 3 else owner
            sent.append((author, await author.send({"conversation": conversation, "body": {"text": f"news {i}"}})))
        assert [s["seq"] for _, s in sent] == list(range(1, 13))
        for client in online:
            mine = {s["seq"] for author, s in sent if author is client}
            assert await received(client, 12 - len(mine), conversation) == [s for s in range(1, 13) if s not in mine]

        # one stored copy: nobody's inbox has the group's messages
        history = await online[4].history(conversation, limit=20)
        assert [m["seq"] for m in history["messages"]] == list(range(12, 0, -1))

        if stack.kind == "real":  # the flush reaches every member without anyone asking
            redis = redis_client.connect(stack.env["IMFLOW_REDIS_URL"])
            try:
                async def flushed() -> bool:
                    async with redis.pipeline(transaction=False) as pipe:
                        for name in everyone:
                            pipe.hget(keys.unread(name), conversation)
                        counts = [int(c or 0) for c in await pipe.execute()]
                    truth = [0 if name == poster_name else (2 if name == owner_name else 12) for name in everyone]
                    return counts == truth

                await eventually(flushed, timeout=60)  # a flush a second, 10,000 counts each: slower when the machine is busy
                assert await redis.zcard(keys.inbox(everyone[7])) == 0
            finally:
                await redis.aclose()

        # an offline member syncs: the messages and the count, exact at once
        async with await connect(stack, offline_name, gateway=1) as late:
            state = await late.sync()
            group_messages = sorted(m["seq"] for m in state["messages"] if m["conversation"] == conversation)
            assert group_messages == list(range(1, 13))
            assert state["conversations"] == [{"conversation": conversation, "last_seq": 12, "read_seq": 0, "unread": 12, **UNCHANGED_SETTINGS}]
            assert state["total_unread"] == 12
            reply = await late.read(conversation, 9)
            assert (reply["count"], reply["total"]) == (3, 3)
            assert sorted(m["seq"] for m in (await late.sync())["messages"] if m["conversation"] == conversation) == [10, 11, 12]
        # a read right after a push counts it, though the flush may not have come yet
        await owner.send({"conversation": conversation, "body": {"text": "one more"}})
        assert (await online[3].next_message())["message"]["seq"] == 13
        assert (await online[3].read(conversation, 13))["count"] == 0
    finally:
        for client in online:
            await client.close()


async def test_a_group_crossing_the_threshold_loses_and_repeats_nothing(stack, users) -> None:
    first = [users.a0, users.a1, users.a2]  # a2 stays offline
    later = [getattr(users, f"b{i}") for i in range(READ_FAN_OUT_THRESHOLD)]
    async with await connect(stack, users.a0) as a0, await connect(stack, users.a1, gateway=1) as a1:
        group = await a0.request({"op": "create_group", "name": "growing", "members": first[1:]})
        gid, conversation = group["gid"], group["conversation"]

        async def post(client: Client, n: int) -> list[int]:
            return [(await client.send({"conversation": conversation, "body": {"text": "x"}}))["seq"] for _ in range(n)]

        assert await post(a0, 3) == [1, 2, 3]  # 3 members: write fan-out
        await a0.request({"op": "add_members", "gid": gid, "users": later})  # 3 + 6: read fan-out
        async with await connect(stack, later[0], gateway=1) as b0:
            assert await post(a1, 3) == [4, 5, 6]
            for name in later[1:]:
                await a0.request({"op": "remove_member", "gid": gid, "user": name})  # 4 members: write again
            assert await post(a0, 2) == [7, 8]
            assert await received(a1, 5, conversation) == [1, 2, 3, 7, 8]
            assert await received(a0, 3, conversation) == [4, 5, 6]
            assert await received(b0, 5, conversation) == [4, 5, 6, 7, 8]
        async with await connect(stack, users.a2) as a2:
            state = await a2.sync()
            seqs = [m["seq"] for m in state["messages"] if m["conversation"] == conversation]
            assert sorted(seqs) == list(range(1, 9)), "every message once, whichever way it was fanned out"
            mids = [m["mid"] for m in state["messages"]]
            assert mids == sorted(mids, reverse=True), "newest first, inbox and group log merged"
            assert state["conversations"][0]["unread"] == 8
        async with await connect(stack, later[3]) as removed:
            with pytest.raises(ClientError) as refused:
                await removed.send({"conversation": conversation, "body": {"text": "still here?"}})
            assert refused.value.code == "forbidden"
            with pytest.raises(ClientError) as hidden:
                await removed.history(conversation)
            assert hidden.value.code == "not_found"


async def test_groups_over_http(stack, users) -> None:
    def auth(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {stack.token(user)}"}

    async with httpx.AsyncClient(base_url=stack.http(), timeout=10) as http:
        made = await http.post("/api/groups", json={"name": "ops", "members": [users.bob]}, headers=auth(users.ann))
        assert made.status_code == 201, made.text
        gid = made.json()["gid"]
        assert made.json()["members"] == {users.ann: "owner", users.bob: "member"}
        assert (await http.get("/api/groups", headers=auth(users.bob))).json()["groups"][0]["gid"] == gid
        added = await http.post(f"/api/groups/{gid}/members", json={"users": [users.cat, users.dan]}, headers=auth(users.ann))
        assert added.json()["added"] == [users.cat, users.dan]
        role = await http.put(f"/api/groups/{gid}/members/{users.cat}/role", json={"role": "admin"}, headers=auth(users.ann))
        assert role.json()["role"] == "admin"
        assert (await http.delete(f"/api/groups/{gid}/members/{users.dan}", headers=auth(users.cat))).status_code == 200
        assert (await http.delete(f"/api/groups/{gid}/members/{users.bob}", headers=auth(users.bob))).json()["op"] == "left"
        members = (await http.get(f"/api/groups/{gid}/members", headers=auth(users.ann))).json()["members"]
        assert members == {users.ann: "owner", users.cat: "admin"}
        # errors: the same codes as the WebSocket, with a 4xx status
        cases = [
            (http.get("/api/groups"), 401, "unauthenticated"),
            (http.get("/api/groups", headers={"Authorization": "Bearer nonsense"}), 401, "token_invalid"),
            (http.get(f"/api/groups/{gid}/members", headers=auth(users.eve)), 404, "not_found"),
            (http.post(f"/api/groups/{gid}/members", json={"users": [users.eve]}, headers=auth(users.dan)), 404, "not_found"),
            (http.put(f"/api/groups/{gid}/members/{users.ann}/role", json={"role": "member"}, headers=auth(users.cat)), 403, "forbidden"),
            (http.post("/api/groups", content=b"{nope", headers=auth(users.ann)), 400, "bad_json"),
            (http.post("/api/groups", json=[1], headers=auth(users.ann)), 400, "bad_frame"),
            (http.post("/api/groups", json={"name": ""}, headers=auth(users.ann)), 400, "bad_frame"),
            (http.post("/api/groups", content=b"x" * (2 << 20), headers=auth(users.ann)), 413, "frame_too_large"),
        ]
        for request, status, code in cases:
            reply = await request
            assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), reply.text
