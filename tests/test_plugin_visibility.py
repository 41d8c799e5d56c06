"""A plugin's per-message state is seen by whom the message is: a member who joined a group after
a red packet was sent (or left and came back after it) neither reads its status nor grabs it,
exactly as their history leaves the message out. Both stacks, members on both gateways."""

from __future__ import annotations

from imflow.client import Client, ClientError
from imflow.testing import eventually


def red_packet(total: int, count: int) -> dict:
    return {"type": "red_packet", "body": {"total_cents": total, "count": count, "greeting": ""}}


async def _status(client: Client, conversation: str, mid: int) -> dict | str:
    """The packet's status, or the error code that refused it."""
    try:
        return await client.request({"op": "red_packet.status", "conversation": conversation, "mid": mid})
    except ClientError as error:
        return error.code


async def _grab(client: Client, conversation: str, mid: int) -> dict | str:
    try:
        return await client.request({"op": "red_packet.grab", "conversation": conversation, "mid": mid})
    except ClientError as error:
        return error.code


async def _history_mids(client: Client, conversation: str) -> set[int]:
    return {m["mid"] for m in (await client.history(conversation, limit=200))["messages"]}


async def _opened(client: Client, conversation: str, mid: int) -> dict:
    """Wait for the ingest agent to open the packet (its sender may always see it)."""
    async def check() -> dict | None:
        state = await _status(client, conversation, mid)
        return state if isinstance(state, dict) else None

    return await eventually(check)


async def test_late_and_returning_members_neither_see_nor_grab_earlier_packets(stack, users) -> None:
    owner = await Client.connect(stack.url(0), stack.token(users.owner))
    bob = await Client.connect(stack.url(1), stack.token(users.bob))  # there from the start
    carol = await Client.connect(stack.url(1), stack.token(users.carol))  # joins after the first packet
    dave = await Client.connect(stack.url(0), stack.token(users.dave))  # removed, then added again
    mallory = await Client.connect(stack.url(1), stack.token(users.mallory))  # never a member
    everyone = {"owner": owner, "bob": bob, "carol": carol, "dave": dave}
    try:
        group = await owner.request({"op": "create_group", "name": "packets", "members": [users.bob, users.dave]})
        gid, conversation = group["gid"], group["conversation"]
        early = (await owner.send({"conversation": conversation, **red_packet(1_000, 10)}, timeout=30))["mid"]
        await _opened(owner, conversation, early)
        await owner.request({"op": "remove_member", "gid": gid, "user": users.dave})
        await owner.request({"op": "add_members", "gid": gid, "users": [users.carol, users.dave]})
        late = (await owner.send({"conversation": conversation, **red_packet(500, 5)}, timeout=30))["mid"]
        await _opened(owner, conversation, late)

        sees = {"early": {"owner", "bob"}, "late": {"owner", "bob", "carol", "dave"}}
        for packet, mid in (("early", early), ("late", late)):
            for name, client in everyone.items():
                state = await _status(client, conversation, mid)
                visible = isinstance(state, dict)
                assert visible == (name in sees[packet]), f"{name} and the {packet} packet: {state}"
                if not visible:
                    assert state == "red_packet.not_found", "a packet they may not see is as if absent"
                in_history = mid in await _history_mids(client, conversation)
                assert visible == in_history, f"{name}: red_packet.status and history disagree on the {packet} packet"

        for name in ("carol", "dave"):
            assert await _grab(everyone[name], conversation, early) == "red_packet.not_found", name
        assert isinstance(await _grab(bob, conversation, early), dict)
        assert isinstance(await _grab(carol, conversation, late), dict)
        assert isinstance(await _grab(dave, conversation, late), dict)
        state = await _status(owner, conversation, early)
        assert set(state["grabs"]) == {users.bob} and state["count_left"] == 9, "the late members' grabs took nothing"

        assert await _grab(mallory, conversation, early) == "red_packet.not_found", "a non-member: as for status"
        assert await _status(mallory, conversation, early) == "red_packet.not_found"
    finally:
        for client in [*everyone.values(), mallory]:
            await client.close()
