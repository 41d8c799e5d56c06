"""Live rooms through real gateways on both stacks: every viewer on every gateway gets every
room message in order, in batches; a viewer that stops reading is dropped without holding up
the others. Outbound queues are small here so that a slow viewer shows quickly."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import httpx
import orjson
import pytest
import websockets

from imflow.client import Client, ClientError
from imflow.testing import eventually

from stacks import connect

STACK_EXTRA_ENV = {
    "IMFLOW_OUTBOUND_QUEUE_FRAMES": "20",
    "IMFLOW_SLOW_CONSUMER_SECONDS": "1",
    "IMFLOW_ROOMS_BATCH_MS": "20",
    "IMFLOW_ROOMS_MAX_TEXT": "16000",  # big posts fill the socket buffers to a viewer that does not read
}


async def _more(value, than: float) -> bool:
    return await value > than


async def room_messages(client: Client, room: str, count: int, timeout: float = 20) -> tuple[list[dict], int]:
    """The next ``count`` messages of a room (from room.batch frames), and how many frames."""
    got: list[dict] = []
    frames = 0
    deadline = time.monotonic() + timeout
    while len(got) < count:
        frame = await client.next_message(timeout=max(0.1, deadline - time.monotonic()), op="room.batch")
        assert frame["room"] == room
        got.extend(frame["messages"])
        frames += 1
    return got, frames


async def test_viewers_on_every_gateway_get_every_room_message_in_order(stack, users) -> None:
    room = f"show-{users.host}"
    clients: list[Client] = []
    try:
        clients.append(await connect(stack, users.host))
        for i in range(6):
            clients.append(await connect(stack, getattr(users, f"v{i}"), gateway=i))
        host, viewers = clients[0], clients[1:]
        assert (await host.request({"op": "room.open", "room": room}))["host"] == users.host
        await host.request({"op": "room.join", "room": room})
        for viewer in viewers:
            joined = await viewer.request({"op": "room.join", "room": room})
            assert joined["host"] == users.host
        info = await viewers[0].request({"op": "room.info", "room": room})
        assert info["viewers"] == 7, "every gateway reports the viewers it holds"
        # sent at once (a connection's frames are handled in order), not each after the last
        # one's reply: the posts reach the gateways within a batch window or two however slow
        # the machine, so that what is checked is the batching, not the round trips' speed
        await asyncio.gather(
            *(host.request({"op": "room.post", "room": room, "text": f"host says {i}"}) for i in range(10)),
            *(viewers[1].request({"op": "room.post", "room": room, "text": f"chat {i}"}) for i in range(1, 10, 2)),
            viewers[2].request({"op": "room.post", "room": room, "text": "🎁", "kind": "gift"}),
        )
        for viewer in [host, *viewers]:
            got, frames = await room_messages(viewer, room, 16)
            texts = [m["text"] for m in got]
            assert [t for t in texts if t.startswith("host")] == [f"host says {i}" for i in range(10)], "in order"
            assert [t for t in texts if t.startswith("chat")] == [f"chat {i}" for i in range(1, 10, 2)]
            assert "🎁" in texts and len(set(m["id"] for m in got)) == 16, "each once"
            assert frames < 16, "messages come batched"
            priorities = {m["text"]: m["priority"] for m in got}
            assert priorities["host says 0"] == priorities["🎁"] == 2 and priorities["chat 1"] == 0
        # no inbox, no unread: a room is not a conversation
        assert (await viewers[3].sync())["messages"] == []
        await viewers[5].request({"op": "room.leave", "room": room})
        await host.request({"op": "room.post", "room": room, "text": "after one left"})
        assert (await room_messages(viewers[4], room, 1))[0][0]["text"] == "after one left"
        with pytest.raises(asyncio.TimeoutError):
            await viewers[5].next_message(timeout=0.5, op="room.batch")
    finally:
        for client in clients:
            await client.close()


async def test_room_operations_refuse_bad_requests(stack, users) -> None:
    async with await connect(stack, users.ann) as ann, await connect(stack, users.bob) as bob:
        await ann.request({"op": "room.open", "room": "r-" + users.ann})
        too_long = "x" * 16_001
        cases = [
            ({"op": "room.join", "room": "bad room!"}, "room.bad_request"),
            ({"op": "room.join", "room": "trailing\n"}, "room.bad_request"),
            ({"op": "room.post", "room": "r-" + users.ann, "text": "hi"}, "room.not_joined"),
            ({"op": "room.open", "room": "r-" + users.ann}, "room.taken"),
        ]
        for frame, code in cases:
            with pytest.raises(ClientError) as refused:
                await bob.request(frame)
            assert refused.value.code == code
        await bob.request({"op": "room.join", "room": "r-" + users.ann})
        for bad in ({"text": ""}, {"text": too_long}, {"text": "hi", "kind": "shout"}, {"text": 5}, {"text": "hi", "kind": []}):
            with pytest.raises(ClientError) as refused:
                await bob.request({"op": "room.post", "room": "r-" + users.ann, **bad})
            assert refused.value.code == "room.bad_request"


async def slow_viewer(stack, user: str, room: str, gateway: int) -> websockets.ClientConnection:
    """A viewer that joins and then never reads: a tiny receive buffer, and nobody calling recv."""
    host, port = stack.url(gateway).removeprefix("ws://").split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    ws = await websockets.connect(stack.url(gateway), sock=sock, max_queue=1, compression=None)
    await ws.send(orjson.dumps({"op": "auth", "token": stack.token(user)}).decode())
    await ws.send(orjson.dumps({"op": "room.join", "room": room, "ref": 1}).decode())
    return ws


async def slow_closes(stack) -> float:
    """How many connections gateway 0 has closed as too slow (4008), from its /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{stack.http(0)}/metrics", timeout=5)).text
    sample = "imflow_slow_connections_closed_total "
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample))


async def read_until_closed(ws: websockets.ClientConnection) -> int:
    """Read a socket to its end; how many room messages it held."""
    received = 0
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            frame = orjson.loads(await ws.recv())
            received += len(frame.get("messages", ()))
    return received


async def test_a_slow_viewer_is_disconnected_without_slowing_the_others(stack, users) -> None:
    """A viewer that stops reading is closed (4008) once more than the gateway's outbound
    buffer has waited for it for a few seconds; the others get every host message meanwhile."""
    room = f"busy-{users.host}"
    clients: list[Client] = []
    slow = None
    try:
        clients.append(await connect(stack, users.host))
        for i in range(2):
            clients.append(await connect(stack, getattr(users, f"f{i}"), gateway=i))
        host, fast = clients[0], clients[1:]
        slow = await slow_viewer(stack, users.slow, room, gateway=0)
        await host.request({"op": "room.open", "room": room})
        for client in [host, *fast]:
            await client.request({"op": "room.join", "room": room})
        async def all_joined() -> bool:  # the slow viewer's join went through too
            return (await host.request({"op": "room.info", "room": room}))["viewers"] == 4

        await eventually(all_joined, timeout=10)
        closed_before = await slow_closes(stack)

        async def read_once_closed() -> int:
            # the slow viewer reads again as soon as the gateway gave up on it: what got through,
            # then the close frame (the gateway cuts a client that does not answer it in 10 s)
            await eventually(lambda: _more(slow_closes(stack), closed_before), timeout=60, interval=0.2)
            assert slow is not None
            return await read_until_closed(slow)

        reading = asyncio.create_task(read_once_closed())
        # 18 MB for each viewer: more than the socket buffers between the gateway and a viewer
        # that does not read hold (about 5 MB on loopback) and the gateway's 512 kB on top
        text, count = "x" * 15_000, 1200
        started = time.monotonic()
        for first in range(0, count, 20):  # pipelined: a connection's frames are handled in order
            await asyncio.gather(*(host.request({"op": "room.post", "room": room, "text": f"{i:04d}{text}"})
                                   for i in range(first, first + 20)))
            await asyncio.sleep(0.04)  # a show, not one burst: many batches over a few seconds
        posting = time.monotonic() - started
        for client in fast:
            got, _ = await room_messages(client, room, count, timeout=60)
            assert [m["text"][:4] for m in got] == [f"{i:04d}" for i in range(count)], "every host message, in order"
        delivered_after = time.monotonic() - started - posting
        # the fast viewers are not held to the slow one's pace (it never reads at all)
        assert delivered_after < 30, f"the fast viewers waited {delivered_after:.1f} s after the last post"
        received = await asyncio.wait_for(reading, 60)
        assert slow.close_code == 4008, slow.close_code
        assert received < count, "it was cut off, not served at the others' pace"
    finally:
        if slow is not None:
            await slow.close()
        for client in clients:
            await client.close()
