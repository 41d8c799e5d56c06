"""No message lost, none twice, seqs gap-free, unread right: through client disconnects,
resends of the same client message id and (on the real stack) a worker restart."""

from __future__ import annotations

import asyncio
import random

from imflow.client import Client
from imflow.core.models import direct_conversation
from imflow.testing import UNCHANGED_SETTINGS, eventually

N = 2000


class Receiver:
    """Bob: connects, syncs, takes pushes, ACKs them, and drops the connection now and then."""

    def __init__(self, stack, user: str, rng: random.Random) -> None:
        self.stack, self.user, self.rng = stack, user, rng
        self.received: dict[int, dict] = {}  # mid -> message: the client de-duplicates by mid
        self.sessions = 0
        self.stop = asyncio.Event()

    def take(self, messages: list[dict]) -> None:
        for message in messages:
            self.received[message["mid"]] = message

    async def run(self) -> None:
        while not self.stop.is_set():
            self.sessions += 1
            async with await Client.connect(self.stack.url(self.rng.randrange(2)), self.stack.token(self.user)) as bob:
                await self.drain_inbox(bob)
                last_seq = 0
                for _ in range(self.rng.randrange(50, 400)):  # then disconnect without warning
                    try:
                        push = await bob.next_message(timeout=0.5)
                    except TimeoutError:
                        if self.stop.is_set():
                            break
                        continue
                    message = push["message"]
                    assert message["seq"] > last_seq, "pushes on one connection arrive in seq order"
                    last_seq = message["seq"]
                    self.take([message])
                    if self.rng.random() < 0.7:  # some ACKs are lost with the connection
                        await bob.ack([message["mid"]])

    async def drain_inbox(self, bob: Client) -> None:
        before = None
        while True:
            page = await bob.sync(before_mid=before, limit=200)
            self.take(page["messages"])
            if page["messages"]:
                await bob.ack([m["mid"] for m in page["messages"]])
            before = page["next_before_mid"]
            if before is None:
                return


class Sender:
    """Alice: sends until ACKed, reconnecting and resending the same cmid when the line drops."""

    def __init__(self, stack, user: str, rng: random.Random) -> None:
        self.stack, self.user, self.rng = stack, user, rng
        self.client: Client | None = None
        self.reconnects = 0

    async def send(self, to: str, text: str, cmid: str) -> dict:
        while True:
            if self.client is None or self.client.closed:
                if self.client is not None:
                    await self.client.close()
                    self.reconnects += 1
                self.client = await Client.connect(self.stack.url(self.rng.randrange(2)), self.stack.token(self.user))
            client = self.client
            if self.rng.random() < 0.01:  # the connection drops while the send is in flight
                asyncio.get_running_loop().call_later(self.rng.random() * 0.005, lambda: asyncio.ensure_future(client.close()))
            try:
                return await client.send_text(to, text, cmid=cmid, timeout=3, attempts=10)
            except (ConnectionError, TimeoutError):
                await client.close()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


async def send_all(stack, sender: str, receiver: str, rng: random.Random, restart_at: int | None) -> dict[str, tuple[int, int]]:
    answers: dict[str, tuple[int, int]] = {}
    alice = Sender(stack, sender, rng)
    restart: asyncio.Task | None = None
    try:
        for i in range(N):
            if restart_at is not None and i == restart_at:
                restart = asyncio.create_task(asyncio.to_thread(stack.restart_worker))
            sent = await alice.send(receiver, f"message {i}", cmid=f"m{i}")
            answers[f"m{i}"] = (sent["mid"], sent["seq"])
            if rng.random() < 0.03 and i > 0:  # a resend of an older message, long after its ACK
                old = f"m{rng.randrange(i)}"
                again = await alice.send(receiver, "resent", cmid=old)
                assert (again["mid"], again["seq"]) == answers[old], "a resend gets the first answer"
    finally:
        await alice.close()
        if restart is not None:  # even after a failure: the stack must have its worker back
            await restart
    assert alice.reconnects > 3, "the sender really lost its connection several times"
    return answers


async def test_every_message_exactly_once_in_order_with_true_unread(stack, users) -> None:
    rng = random.Random(20261127)
    conversation = direct_conversation(users.alice, users.bob)
    receiver = Receiver(stack, users.bob, rng)
    receiving = asyncio.create_task(receiver.run())
    restart_at = N // 2 if stack.kind == "real" else None
    try:
        answers = await send_all(stack, users.alice, users.bob, rng, restart_at)
    finally:  # the receiver stops (and closes its connection) whatever happened to the sender
        receiver.stop.set()
        await receiving

    assert sorted(seq for _, seq in answers.values()) == list(range(1, N + 1)), "sender ACKs: gap-free seqs"

    async with await Client.connect(stack.url(1), stack.token(users.bob)) as bob:
        await receiver.drain_inbox(bob)

        async def complete() -> bool:
            # what the inbox no longer holds, the client pulls from history by seq
            before = None
            while True:
                page = await bob.history(conversation, before_seq=before, limit=200)
                receiver.take(page["messages"])
                before = page["next_before_seq"]
                if before is None:
                    return len(receiver.received) >= N

        await eventually(complete, timeout=60, interval=0.5)
        messages = sorted(receiver.received.values(), key=lambda m: m["seq"])
        assert [m["seq"] for m in messages] == list(range(1, N + 1)), "every seq once, no gaps"
        assert sorted(m["client_msg_id"] for m in messages) == sorted(f"m{i}" for i in range(N))
        assert {m["client_msg_id"]: (m["mid"], m["seq"]) for m in messages} == answers
        assert [m["mid"] for m in messages] == sorted(m["mid"] for m in messages)

        # unread equals the truth: bob read nothing, alice read all she sent (her read seq is
        # what bob's state shows as the peer's)
        state = await bob.sync()
        assert state["conversations"] == [
            {"conversation": conversation, "last_seq": N, "read_seq": 0, "unread": N, **UNCHANGED_SETTINGS, "peer_read_seq": N}
        ]
        assert state["total_unread"] == N
        assert (await bob.read(conversation, 1500))["count"] == N - 1500
        assert (await bob.sync())["total_unread"] == N - 1500
    async with await Client.connect(stack.url(0), stack.token(users.alice)) as alice:
        assert (await alice.sync())["total_unread"] == 0
    assert receiver.sessions > 3, "the receiver really reconnected several times"
    if stack.kind == "real":
        assert stack.workers_started == 2, "the worker was restarted in the middle"
    stack.assert_alive()
