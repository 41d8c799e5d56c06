"""Redis loss under load (#13 item 4): redis-server killed with SIGKILL and started again from
its AOF while senders send → every message a sender got a ``sent`` for is delivered exactly
once (the client de-duplicates by mid) and in seq order, seqs have no gap, unread counts are
the truth, and no imflow process exits.

The redis-server killed here is this test's own (its own port and folder, AOF with
``appendfsync everysec`` as scripts/services starts it), never the shared one.

``Traffic`` (the load and the checks) is shared with tests/test_faults_gateway.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis as redis_sync

from imflow.client import Client, ClientError
from imflow.core.models import direct_conversation
from imflow.testing import eventually, free_port, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

# error codes a send may get while a dependency is out: the client resends the same cmid
RETRYABLE = {"unavailable"}


class RedisServer:
    """A redis-server of the test's own, started like scripts/services starts the shared one."""

    def __init__(self, folder: Path, appendfsync: str = "everysec") -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.appendfsync = appendfsync
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again: it loads its AOF) and wait until it answers PING. Raises
        AssertionError if it exits or does not answer within 30 s."""
        self.starts += 1
        log = self.folder / f"redis-{self.starts}.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--protected-mode", "yes",
                 "--dir", str(self.folder), "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", ""],
                stdout=out, stderr=subprocess.STDOUT,
            )

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, log.read_text(errors="replace")
            with contextlib.suppress(redis_sync.exceptions.RedisError), redis_sync.Redis(port=self.port, socket_timeout=1) as client:
                return bool(client.ping())
            return False

        wait_until(answers, "redis-server answers PING", timeout=30)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed beyond what the kernel already has."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def own_redis(tmp_path: Path):
    """This test's own redis-server (AOF, appendfsync everysec), stopped at the end."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@dataclass
class Receiver:
    user: str
    gateway: int  # where it connects first; it falls back to the others
    received: dict[int, dict] = field(default_factory=dict)  # mid -> message (the client's de-duplication)
    sessions: int = 0
    order_problems: list[str] = field(default_factory=list)


class Traffic:
    """Senders that send at a steady rate, each message until it is ACKed (the same cmid on
    every resend, across reconnects and ``unavailable``), and receivers that take pushes and
    ACK them, reconnect when their connection goes and sync when they come back.

    ``stack`` is a tests/stacks.py Stack with at least two gateways; ``alive`` lists the
    gateways a client may connect to now (a test removes one it kills).
    """

    def __init__(self, stack, tag: str, senders: int = 6, receivers: int = 8, rate: float = 150.0) -> None:
        self.stack = stack
        self.alive = list(range(len(stack.ports)))
        self.senders = [f"s{i}-{tag}" for i in range(senders)]
        self.receivers = [Receiver(f"r{i}-{tag}", i % len(stack.ports)) for i in range(receivers)]
        self.rate = rate
        self.group: str | None = None  # its conversation id
        self.answers: dict[str, tuple[str, int, int]] = {}  # cmid -> (conversation, mid, seq)
        self.errors: dict[str, int] = defaultdict(int)  # error codes the senders got
        self.duplicates: list[str] = []
        self.acked_at: list[float] = []  # loop time of every first ACK
        self.sending = asyncio.Event()
        self.receiving = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # -- connections

    async def connect(self, user: str, prefer: int) -> Client:
        """A connection to the preferred gateway, else to another live one; retried until one answers."""
        while True:
            for gateway in [prefer, *self.alive]:
                if gateway not in self.alive:
                    continue
                try:
                    return await Client.connect(self.stack.url(gateway), self.stack.token(user), timeout=3)
                except Exception:  # a gateway down, or Redis out (the token cannot be checked)
                    continue
            await asyncio.sleep(0.2)

    async def create_group(self) -> None:
        """A read fan-out group (the stack's threshold is 6) of every sender and receiver."""
        async with await self.connect(self.senders[0], 0) as owner:
            members = [*self.senders[1:], *(r.user for r in self.receivers)]
            group = await owner.request({"op": "create_group", "name": "faults", "members": members})
            self.group = group["conversation"]

    # -- load

    def start(self) -> None:
        self.sending.set()
        self.receiving.set()
        self._tasks = [asyncio.create_task(self._receive(r)) for r in self.receivers]
        self._senders = [asyncio.create_task(self._send(i)) for i in range(len(self.senders))]

    async def stop(self, timeout: float = 60) -> None:
        """Stop sending new messages; wait until each one sent is ACKed and every receiver has
        had a session after the last ACK; then stop the receivers."""
        self.sending.clear()
        await asyncio.wait_for(asyncio.gather(*self._senders), timeout)
        self.receiving.clear()
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)

    def targets(self, sender: int) -> list[dict]:
        out = [{"to": r.user} for r in self.receivers]
        if self.group is not None:
            out.append({"conversation": self.group})
        return out[sender % len(out) :] + out[: sender % len(out)]

    async def _send(self, index: int) -> None:
        user = self.senders[index]
        loop = asyncio.get_running_loop()
        client = await self.connect(user, index % len(self.stack.ports))
        targets, start, count = self.targets(index), loop.time(), 0
        try:
            while self.sending.is_set():
                target = targets[count % len(targets)]
                cmid = f"{user}-{count}"
                while True:  # until ACKed: a resend keeps the cmid, so it is stored once
                    if client.closed:
                        await client.close()
                        client = await self.connect(user, index % len(self.stack.ports))
                    try:
                        sent = await client.send({**target, "body": {"text": cmid}}, cmid, timeout=2, attempts=1)
                    except ClientError as error:
                        self.errors[str(error.code)] += 1
                        await asyncio.sleep(0.1)
                        continue
                    except (ConnectionError, TimeoutError):
                        self.errors["no answer"] += 1
                        continue
                    answer = (sent["conversation"], sent["mid"], sent["seq"])
                    if self.answers.setdefault(cmid, answer) != answer:
                        self.duplicates.append(cmid)
                    self.acked_at.append(loop.time())
                    break
                count += 1
                # a steady rate over all senders
                await asyncio.sleep(max(0.0, start + count * len(self.senders) / self.rate - loop.time()))
        finally:
            await client.close()

    async def _receive(self, receiver: Receiver) -> None:
        while True:
            client = await self.connect(receiver.user, receiver.gateway)
            receiver.sessions += 1
            last: dict[str, int] = {}  # conversation -> the last seq pushed on this connection
            try:
                await self.drain(client, receiver)
                while not client.closed:
                    try:
                        push = await client.next_message(timeout=0.5)
                    except TimeoutError:
                        if not self.receiving.is_set():
                            break
                        continue
                    message = push["message"]
                    conversation = message["conversation"]
                    if message["seq"] <= last.get(conversation, 0):
                        receiver.order_problems.append(f"{conversation}: {message['seq']} after {last[conversation]}")
                    last[conversation] = message["seq"]
                    receiver.received[message["mid"]] = message
                    with contextlib.suppress(Exception):  # a lost ACK: the inbox gives it again
                        await client.ack([message["mid"]])
            except (ConnectionError, TimeoutError, ClientError):
                pass  # the gateway went, or a dependency is out: connect again and sync
            finally:
                await client.close()
            if not self.receiving.is_set():
                await self.final_drain(receiver)
                return

    async def drain(self, client: Client, receiver: Receiver) -> None:
        """What a client does when it (re)connects: sync every page (the inbox, ACKed as it
        comes, and on the first page the unread messages of read fan-out groups), then pull
        from history any seq it still lacks (a push lost while it was connected, in a group
        that holds only its newest messages in Redis)."""
        before, conversations = None, None
        while True:
            page = await client.sync(before_mid=before, limit=500)
            if conversations is None:
                conversations = page["conversations"]
            for message in page["messages"]:
                receiver.received[message["mid"]] = message
            inbox = [m["mid"] for m in page["messages"]]
            if inbox:
                await client.ack(inbox)
            before = page["next_before_mid"]
            if before is None:
                break
        for state in conversations or ():
            await self.fill_gaps(client, receiver, state["conversation"], state["last_seq"])

    @staticmethod
    async def fill_gaps(client: Client, receiver: Receiver, conversation: str, last_seq: int) -> None:
        held = {m["seq"] for m in receiver.received.values() if m["conversation"] == conversation}
        missing = set(range(1, last_seq + 1)) - held
        before = max(missing) + 1 if missing else None
        while missing and before is not None:
            page = await client.history(conversation, before_seq=before, limit=200)
            for message in page["messages"]:
                receiver.received[message["mid"]] = message
                missing.discard(message["seq"])
            before = page["next_before_seq"]

    async def final_drain(self, receiver: Receiver) -> None:
        """After the senders stopped: one last session that syncs (retried while a fault lasts)."""
        while True:
            client = await self.connect(receiver.user, receiver.gateway)
            try:
                await self.drain(client, receiver)
                return
            except (ConnectionError, TimeoutError, ClientError):
                await asyncio.sleep(0.2)
            finally:
                await client.close()

    # -- checks

    def longest_ack_gap(self, since: float) -> float:
        """The longest time without a first ACK, from ``since`` (loop time) on."""
        acks = sorted(at for at in self.acked_at if at >= since)
        return max((b - a for a, b in zip([since, *acks], acks, strict=False)), default=0.0)

    async def check(self) -> None:
        """Exactly once, in seq order, gap-free, unread the truth (nobody read anything)."""
        assert not self.duplicates, f"resends answered with another mid or seq: {self.duplicates[:5]}"
        by_conversation: dict[str, list[int]] = defaultdict(list)
        for conversation, _, seq in self.answers.values():
            by_conversation[conversation].append(seq)
        for conversation, seqs in by_conversation.items():
            assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"{conversation}: ACKed seqs have gaps or repeats"
        mids = {mid for _, mid, _ in self.answers.values()}
        assert len(mids) == len(self.answers), "one mid per message"
        for receiver in self.receivers:
            assert not receiver.order_problems, f"{receiver.user}: pushes out of seq order: {receiver.order_problems[:5]}"
            mine = {cmid: answer for cmid, answer in self.answers.items()
                    if answer[0] in (self.group, direct_conversation(_sender_of(cmid), receiver.user))}
            got = {m["client_msg_id"]: (m["conversation"], m["mid"], m["seq"]) for m in receiver.received.values()}
            missing = sorted(set(mine) - set(got))
            assert not missing, f"{receiver.user}: {len(missing)} ACKed messages never delivered, e.g. {missing[:5]}"
            assert got == mine, f"{receiver.user}: delivered messages differ from the ACKed ones"
        await eventually(self._unread_is_true, timeout=30, interval=0.5)
        # last, as it says least: a send refused during a fault is refused as retryable
        assert set(self.errors) <= RETRYABLE | {"no answer"}, f"unexpected error codes: {dict(self.errors)}"

    async def _unread_is_true(self) -> bool | str:
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for cmid, (conversation, _, _) in self.answers.items():
            for receiver in self.receivers:
                if conversation == self.group or conversation == direct_conversation(_sender_of(cmid), receiver.user):
                    counts[receiver.user][conversation] += 1
        for receiver in self.receivers:
            async with await self.connect(receiver.user, self.alive[0]) as client:
                state = await client.sync(limit=1)
            got = {c["conversation"]: c["unread"] for c in state["conversations"]}
            if got != dict(counts[receiver.user]) or state["total_unread"] != sum(got.values()):
                return f"{receiver.user}: unread {got} (total {state['total_unread']}), expected {dict(counts[receiver.user])}"
        return True


def _sender_of(cmid: str) -> str:
    return cmid.rsplit("-", 1)[0]


async def test_redis_killed_and_restarted_from_its_aof_loses_nothing(own_redis, kafka_url, tmp_path) -> None:
    from stacks import real_stack

    stack = await asyncio.to_thread(real_stack, tmp_path, kafka_url, own_redis.url, 2)
    try:
        traffic = Traffic(stack, uuid.uuid4().hex[:6], senders=10, rate=300)  # 300 msg/s, as in the issue
        await traffic.create_group()
        traffic.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await eventually(lambda: _at_least(traffic, 600), timeout=30)
        acked_before = len(traffic.answers)
        killed_at = loop.time()
        await asyncio.to_thread(own_redis.kill)
        down_for = 1.0  # an operator's (or a supervisor's) restart, from the AOF
        await asyncio.sleep(down_for)
        await asyncio.to_thread(own_redis.start)
        restarted_at = loop.time()
        more = len(traffic.answers) + 600
        await eventually(lambda: _at_least(traffic, more), timeout=60)
        await traffic.stop()
        gap = traffic.longest_ack_gap(killed_at)
        print(f"\nredis down {restarted_at - killed_at:.1f} s; longest ACK gap from the kill {gap:.1f} s; "
              f"{acked_before} ACKed before ({acked_before / (killed_at - started):.0f}/s), {len(traffic.answers)} in all; "
              f"sender errors {dict(traffic.errors)}")
        await traffic.check()
        stack.assert_alive()
        # an outage of a dependency is an expected condition: answered with `unavailable` and
        # logged as a warning, never as a failure of ours with a traceback
        for process in [*stack.gateways, stack.worker]:
            assert "Traceback" not in process.output(), f"{process.log_path.name}:\n{process.output()[-4000:]}"
    finally:
        await asyncio.to_thread(stack.stop)


async def _at_least(traffic: Traffic, count: int) -> bool:
    return len(traffic.answers) >= count

