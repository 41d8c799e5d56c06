"""A soak: mixed traffic for a long time with a worker and a gateway killed and restarted.

    scripts/bench soak [--minutes 30] [--kill-every-seconds 120] [--load 0.5] [--rate N] [--json PATH]

Two workers and two gateways (imflow processes, benchmarks/stack.py). The traffic, from one
load process (imflow.client.Client, resending unACKed sends with the same cmid):

- one-to-one: 20 senders to 50 receivers (100 conversations); 40 receivers online (they get
  pushes and ``ack`` them), 10 offline until the end (their messages wait in the inbox);
- a 2,000-member group (read fan-out: above IMFLOW_READ_FAN_OUT_THRESHOLD), 5 members sending,
  40 members online;
- red packets: one-to-one (2 shares: receiver and sender grab) and in the group (10 shares,
  grabbed by online members);
- a live room: a host posting 2/s, 20 viewers over both gateways, 5 of them chatting 1/s.

The message rate (one-to-one, group and red packets together) is ``--load`` (0.5) times the
capacity measured first on the same stack with the same mix (a closed loop with a bounded
window for ``--probe-seconds``), unless ``--rate`` gives it. Every ``--kill-every-seconds`` the
victim worker (a static group member, IMFLOW_WORKER_INSTANCE_ID) is SIGKILLed and started
again ``--down-seconds`` later; half a period later the victim gateway is SIGKILLed and started
again on the same port, and its clients reconnect there, resend what has no ``sent`` and rejoin
the room. The other worker and gateway live the whole run: their memory is the leak signal
(the victims' memory is reported per life).

Reported: resident memory (VmRSS of /proc/<pid>/status, with any child processes) of every
imflow process every ``--sample-seconds``, and its slope in MB/min (least squares over the
samples after ``--warmup-seconds``; for a victim, per life, after the first half of the life
or the warm-up, whichever is shorter); error frames by code, inside and outside the fault
windows (from a kill until ``--grace-seconds`` after the restarted process is ready); and the
checks at the end, after every send has its ``sent``: each cmid ACKed with one (mid, seq) only,
each conversation's history holding exactly the ACKed messages with seqs 1..n, every receiver
having every message after dedup by mid over pushes, a full sync and history, unread counts
true (failover.py's check for one-to-one, the group's counts per member), red packets whose
grabs add up, and the room's host posts reaching every viewer that was in the room throughout.
A progress line every 30 s. Exit status 1 if a check fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imflow.client import Client, ClientError
from imflow.core import tokens
from imflow.core.models import direct_conversation
from imflow.testing import ImflowProcess, start_listening

from failover import _check_seqs_and_unread  # benchmarks/ is on the path when run as a script
from stack import SECRET, Stack, arguments, percentile

ALLOWED_DURING_FAULTS = {"unavailable"}  # and throttle.* codes
RESEND_AFTER_S = 10.0  # no 'sent' for this long: resend with the same cmid
UNAVAILABLE_RETRY_S = 1.0


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid`` so far, in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def least_squares_slope(samples: list[tuple[float, float]]) -> float | None:
    """Slope of y over x (units of y per unit of x) by least squares; None for < 3 samples."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mx = sum(x for x, _ in samples) / n
    my = sum(y for _, y in samples) / n
    var = sum((x - mx) ** 2 for x, _ in samples)
    return sum((x - mx) * (y - my) for x, y in samples) / var if var else None


def rss_mb(pid: int, children: bool = True) -> float | None:
    """Resident memory of ``pid`` (and its descendants unless ``children`` is false) in MB
    (VmRSS), None if it is gone."""
    total, found = 0.0, False
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
                        found = True
                        break
            for task in os.listdir(f"/proc/{current}/task") if children else ():
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total if found else None


@dataclass
class Life:
    """One process of a slot (a victim has a life per restart)."""

    pid: int
    started: float
    ended: float | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds since the soak's start, MB)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (seconds since the soak's start, CPU seconds)


class SoakClient(Client):
    """A Client whose pushes go to an observer instead of piling up in ``pushes``."""

    observer: Any = None

    def _dispatch(self, frame: dict[str, Any]) -> None:
        if self.observer is not None and self.observer(frame):
            return
        super()._dispatch(frame)


class Peer:
    """A user on its home gateway, reconnecting (to the same port) whenever the socket drops."""

    def __init__(self, soak: Soak, user: str, gateway: int, room: str | None = None, host: bool = False) -> None:
        self.soak, self.user, self.gateway, self.room, self.host = soak, user, gateway, room, host
        self.client: SoakClient | None = None
        self.up = asyncio.Event()
        self.received: set[int] = set()  # mids pushed to this user
        self.push_duplicates = 0
        self.to_ack: list[int] = []
        self.sessions: list[list[float]] = []  # [joined the room or connected, dropped (inf while up)]
        self.room_seen: set[str] = set()
        self.reconnects = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self._connect_once()
        self._task = asyncio.create_task(self._keep_connected())

    async def _connect_once(self) -> None:
        url = self.soak.stack.urls[self.gateway]
        client = await SoakClient.connect(url, tokens.issue(SECRET, self.user, 24 * 3600))
        client.observer = self._on_frame
        self.client = client
        if self.room is not None:
            if self.host:
                await client.request({"op": "room.open", "room": self.room})
            await client.request({"op": "room.join", "room": self.room})
        self.sessions.append([self.soak.now(), float("inf")])
        self.up.set()
        self.soak.resend_for(self)

    async def _keep_connected(self) -> None:
        while not self.soak.stopping:
            assert self.client is not None
            await asyncio.wait({self.client._reader})
            self.up.clear()
            if self.sessions and self.sessions[-1][1] == float("inf"):
                self.sessions[-1][1] = self.soak.now()
            if self.soak.stopping:
                return
            delay = 0.2
            while not self.soak.stopping:
                try:
                    await self._connect_once()
                    self.reconnects += 1
                    break
                except (OSError, TimeoutError, ClientError, ConnectionError, asyncio.TimeoutError) as error:
                    if isinstance(error, ClientError):
                        self.soak.count_error(error.frame)
                    with_client, self.client = self.client, None
                    if with_client is not None and not with_client.closed:
                        await with_client.close()
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
                except Exception as error:  # websockets' handshake errors: the gateway is coming up
                    self.soak.note(f"{self.user}: reconnect failed: {error!r}")
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)

    def _on_frame(self, frame: dict[str, Any]) -> bool:
        op = frame.get("op")
        if op == "sent":
            self.soak.on_sent(frame)
            return False
        if op == "error":
            ref = frame.get("ref")
            if ref is not None and self.client is not None and ref not in self.client._replies:
                # the answer to a request we gave up waiting for (and retried): ours, not a fault's
                self.soak.late_answers[str(frame.get("code"))] += 1
                return True
            self.soak.count_error(frame)
            if frame.get("cmid") and frame.get("code") == "unavailable":
                self.soak.retry_soon(frame["cmid"])
            return False
        if frame.get("ref") is not None:
            return False
        if op == "msg":
            message = frame["message"]
            mid = message["mid"]
            if mid in self.received:
                self.push_duplicates += 1
            else:
                self.received.add(mid)
                if message["conversation"].startswith("p:"):
                    self.to_ack.append(mid)
        elif op == "room.batch":
            for posted in frame["messages"]:
                if posted.get("sender") == self.soak.room_host:
                    self.room_seen.add(posted["id"])
        return True  # every other push is consumed here

    async def request(self, frame: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """A request on the current connection; ConnectionError if there is none."""
        if not self.up.is_set() or self.client is None:
            raise ConnectionError("not connected")
        return await self.client.request(frame, timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.client is not None:
            await self.client.close()


@dataclass
class Pending:
    sender: Peer
    target: dict[str, Any]
    kind: str
    last_at: float
    attempts: int = 1
    retry_at: float | None = None


class Soak:
    def __init__(self, args: Any) -> None:
        self.args = args
        self.run = uuid.uuid4().hex[:6]
        self.random = random.Random(7)
        self.t0 = time.monotonic()
        self.stopping = False
        self.pending: dict[str, Pending] = {}
        self.answers: dict[str, tuple[int, int]] = {}  # cmid -> (mid, seq)
        self.conversation_of_cmid: dict[str, str] = {}
        self.sender_of: dict[str, str] = {}
        self.kind_of: dict[str, str] = {}
        self.direct_pairs: dict[str, tuple[str, str]] = {}  # cmid -> (sender, receiver)
        self.duplicates = 0
        self.first_at: dict[str, float] = {}  # cmid -> when it was first sent
        self.latencies: list[float] = []  # send -> 'sent' of the messages ACKed since the last progress line
        self.retry_answers: Counter[str] = Counter()  # error frames that answered our own retries
        self.grab_retries: Counter[str] = Counter()
        self.late_answers: Counter[str] = Counter()  # error frames answering requests no longer awaited
        self.issued = 0
        self.resends = 0
        self.skipped = 0  # sends not issued: too many waiting for their 'sent'
        self.errors: list[tuple[float, str]] = []
        self.notes: list[str] = []
        self.faults: list[dict[str, Any]] = []
        self.counter = 0
        self.room_for_more = asyncio.Event()
        self.window = 0
        self.packets: dict[int, dict[str, Any]] = {}  # mid -> {conversation, total, count, sender, grabbers}
        self.packet_of_cmid: dict[str, tuple[int, int]] = {}  # cmid -> (total cents, shares)
        self.peer_by_user: dict[str, Peer] = {}
        self.room_running = True
        self.grab_results: dict[tuple[int, str], Any] = {}  # (mid, user) -> share cents, "already" or "failed"
        self.tasks: set[asyncio.Task] = set()
        self.room_posts: dict[str, tuple[float, float]] = {}  # post id -> (posted, answered)
        self.lives: dict[str, list[Life]] = {}

    # -- time and bookkeeping

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str) -> None:
        self.notes.append(f"{self.now():7.1f}s {text}")
        print(f"[soak] {self.now():7.1f}s {text}", flush=True)

    def count_error(self, frame: dict[str, Any]) -> None:
        self.errors.append((self.now(), str(frame.get("code"))))

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- the stack and its processes

    def setup_stack(self) -> None:
        self.stack = Stack(self.args.kafka, self.args.redis, workers=1, gateways=2)
        self.folder = self.stack.processes[0].log_path.parent
        self.worker_env = {**self.stack.env, "IMFLOW_LOG_LEVEL": "info", "IMFLOW_WORKER_INSTANCE_ID": f"soak-victim-{self.run}"}
        self.victim_worker = ImflowProcess(["worker"], self.worker_env, self.folder / "worker-victim-0.log", self.folder)
        self.victim_worker.wait_output("Worker ready", timeout=120)
        self.survivor_worker = self.stack.processes[0]
        self.survivor_gateway, self.victim_gateway = self.stack.processes[1], self.stack.processes[2]
        self.victim_port = int(self.stack.urls[1].split(":")[2].split("/")[0])
        self._relist()
        for name, process in self._slots().items():
            self.lives[name] = [Life(process.proc.pid, self.now())]
        self.lives["load (this process)"] = [Life(os.getpid(), self.now())]

    def _slots(self) -> dict[str, ImflowProcess]:
        return {"worker (survivor)": self.survivor_worker, "worker (victim)": self.victim_worker,
                "gateway (survivor)": self.survivor_gateway, "gateway (victim)": self.victim_gateway}

    def _relist(self) -> None:
        # Stack.stop stops gateways first, then workers
        self.stack.processes = [self.survivor_worker, self.victim_worker, self.survivor_gateway, self.victim_gateway]

    async def sample_rss(self) -> None:
        while not self.stopping:
            for name, lives in self.lives.items():
                life = lives[-1]
                if life.ended is None:
                    # the load process's children are the imflow processes: count itself alone
                    mb = rss_mb(life.pid, children=not name.startswith("load"))
                    cpu = cpu_seconds(life.pid)
                    if mb is not None and cpu is not None:
                        life.samples.append((self.now(), mb))
                        life.cpu.append((self.now(), cpu))
            await asyncio.sleep(self.args.sample_seconds)

    async def kill_and_restart(self, which: str, number: int) -> None:
        name = f"{which} (victim)"
        process = self.victim_worker if which == "worker" else self.victim_gateway
        fault: dict[str, Any] = {"what": which, "killed_at": round(self.now(), 1), "ready_at": None}
        self.faults.append(fault)
        process.proc.send_signal(signal.SIGKILL)
        process.terminate()  # reaps it and closes its log
        self.lives[name][-1].ended = self.now()
        self.note(f"SIGKILL {which} pid {process.proc.pid}")
        await asyncio.sleep(self.args.down_seconds)
        if which == "worker":
            worker = ImflowProcess(["worker"], self.worker_env, self.folder / f"worker-victim-{number}.log", self.folder)
            self.victim_worker = worker
            self.lives[name].append(Life(worker.proc.pid, self.now()))
            await asyncio.to_thread(worker.wait_output, "Worker ready", 180)
        else:
            self.lives[name].append(Life(-1, self.now(), ended=self.now()))  # replaced once it listens
            gateway, _, answer = await asyncio.to_thread(
                start_listening, ["gateway"], self.stack.env, self.folder / f"gateway-victim-{number}.log", self.folder, self.victim_port)
            self.victim_gateway = gateway
            self.lives[name][-1] = Life(gateway.proc.pid, self.lives[name][-1].started)
            if answer.status_code != 200:
                self.note(f"restarted gateway not ready: {answer.status_code} {answer.text[:200]}")
        self._relist()
        fault["ready_at"] = round(self.now(), 1)
        self.note(f"{which} back (pid {self.lives[name][-1].pid}), {fault['ready_at'] - fault['killed_at']:.1f} s after the kill")

    async def fault_schedule(self, start: float, end: float) -> None:
        period = self.args.kill_every_seconds
        events = []
        k = 1
        while start + k * period < end - 20:
            events.append((start + k * period, "worker", k))
            if start + k * period + period / 2 < end - 20:
                events.append((start + k * period + period / 2, "gateway", k))
            k += 1
        for at, which, number in events:
            await asyncio.sleep(max(0.0, at - self.now()))
            if self.stopping:
                return
            await self.kill_and_restart(which, number)

    # -- users

    async def setup_users(self) -> None:
        gw = lambda i: i % 2  # noqa: E731
        self.senders = [Peer(self, f"s{i:02d}-{self.run}", gw(i)) for i in range(20)]
        self.receivers = [f"r{i:02d}-{self.run}" for i in range(50)]
        self.online_receivers = {u: Peer(self, u, gw(i)) for i, u in enumerate(self.receivers[:40])}
        self.conversations_of_sender = {
            s.user: [self.receivers[(i * 5 + k) % 50] for k in range(5)] for i, s in enumerate(self.senders)}
        members = [f"g{i:04d}-{self.run}" for i in range(1999)]
        self.group_owner = Peer(self, f"gowner-{self.run}", 0)
        self.group_online = [Peer(self, u, gw(i)) for i, u in enumerate(members[:40])]
        self.group_senders = self.group_online[:5]
        self.group_offline_sample = members[40:100]
        self.room = f"soak-{self.run}"
        self.room_host = f"rhost-{self.run}"
        self.host = Peer(self, self.room_host, 0, room=self.room, host=True)
        self.viewers = [Peer(self, f"v{i:02d}-{self.run}", gw(i), room=self.room) for i in range(20)]
        everyone = [*self.senders, *self.online_receivers.values(), self.group_owner, *self.group_online, self.host]
        for peer in everyone:  # the host first: viewers join a room that has a host
            await peer.start()
        for peer in self.viewers:
            await peer.start()
        self.peers = [*everyone, *self.viewers]
        self.peer_by_user = {peer.user: peer for peer in self.peers}
        group = await self.group_owner.request({"op": "create_group", "name": "soak"})
        self.gid, self.group = group["gid"], group["conversation"]
        for first in range(0, len(members), 1000):
            await self.group_owner.request({"op": "add_members", "gid": self.gid, "users": members[first:first + 1000]}, timeout=60)
        self.group_members = [self.group_owner.user, *members]

    # -- sending

    def resend_for(self, peer: Peer) -> None:
        for cmid, pending in list(self.pending.items()):
            if pending.sender is peer:
                self.spawn(self._transmit(cmid, pending))

    def retry_soon(self, cmid: str) -> None:
        pending = self.pending.get(cmid)
        if pending is not None:
            pending.retry_at = self.now() + UNAVAILABLE_RETRY_S

    async def _transmit(self, cmid: str, pending: Pending) -> None:
        pending.last_at = self.now()
        pending.retry_at = None
        client = pending.sender.client
        if client is None or not pending.sender.up.is_set():
            return  # sent again when it reconnects
        try:
            await client.send_nowait(pending.target, cmid)
        except ConnectionError:
            pass

    async def resender(self) -> None:
        while True:
            now = self.now()
            for cmid, pending in list(self.pending.items()):
                due = pending.retry_at is not None and now >= pending.retry_at
                if due or now - pending.last_at > RESEND_AFTER_S:
                    pending.attempts += 1
                    self.resends += 1
                    await self._transmit(cmid, pending)
            await asyncio.sleep(0.5)

    def on_sent(self, frame: dict[str, Any]) -> None:
        cmid = frame["cmid"]
        answer = (frame["mid"], frame["seq"])
        if cmid in self.answers and self.answers[cmid] != answer:
            self.duplicates += 1
        self.answers.setdefault(cmid, answer)
        first = self.first_at.pop(cmid, None)
        if first is not None:
            self.latencies.append(self.now() - first)
        pending = self.pending.pop(cmid, None)
        if pending is not None and pending.kind.startswith("packet"):
            self._grab_all(cmid, frame["mid"])
        if len(self.pending) < self.window:
            self.room_for_more.set()

    async def send_mixed(self) -> None:
        self.counter += 1
        cmid = f"c{self.counter}-{self.run}"
        draw = self.random.random()
        if draw < self.args.packet_share:
            if self.random.random() < 0.75:
                kind = "packet-direct"
            else:
                kind = "packet-group"
        elif draw < self.args.packet_share + self.args.group_share:
            kind = "group"
        else:
            kind = "direct"
        if kind in ("direct", "packet-direct"):
            sender = self.senders[self.counter % len(self.senders)]
            receiver = self.conversations_of_sender[sender.user][(self.counter // len(self.senders)) % 5]
            target: dict[str, Any] = {"to": receiver}
            self.direct_pairs[cmid] = (sender.user, receiver)
            conversation = direct_conversation(sender.user, receiver)
        else:
            sender = self.group_senders[self.counter % len(self.group_senders)]
            target = {"conversation": self.group}
            conversation = self.group
        if kind.startswith("packet"):
            count = 2 if kind == "packet-direct" else 10
            total = self.random.randint(count, 5000)
            target = {**target, "type": "red_packet", "body": {"total_cents": total, "count": count, "greeting": cmid}}
            self.packet_of_cmid[cmid] = (total, count)
        else:
            target = {**target, "body": {"text": f"{kind} {self.counter}"}}
        self.conversation_of_cmid[cmid] = conversation
        self.sender_of[cmid] = sender.user
        self.kind_of[cmid] = kind
        pending = Pending(sender, target, kind, self.now())
        self.pending[cmid] = pending
        self.first_at[cmid] = self.now()
        self.issued += 1
        await self._transmit(cmid, pending)

    # -- red packets

    def _grab_all(self, cmid: str, mid: int) -> None:
        total, count = self.packet_of_cmid[cmid]
        conversation = self.conversation_of_cmid[cmid]
        sender = self.sender_of[cmid]
        if conversation.startswith("p:"):
            receiver = self.direct_pairs[cmid][1]
            grabbers = [p for p in (self.online_receivers.get(receiver), self._peer(sender)) if p is not None]
        else:
            start = mid % len(self.group_online)
            grabbers = [self.group_online[(start + i) % len(self.group_online)] for i in range(count)]
        self.packets[mid] = {"conversation": conversation, "total": total, "count": count, "sender": sender,
                             "grabbers": [p.user for p in grabbers]}
        for peer in grabbers:
            self.spawn(self._grab(peer, conversation, mid))

    def _peer(self, user: str) -> Peer | None:
        return self.peer_by_user.get(user)

    async def _grab(self, peer: Peer, conversation: str, mid: int) -> None:
        key = (mid, peer.user)
        deadline = self.now() + 120
        lost_connection = False
        while self.now() < deadline:
            try:
                await asyncio.wait_for(peer.up.wait(), max(0.1, deadline - self.now()))
                # a connection's frames are served in order: after a reconnect the grab waits behind the resends
                reply = await peer.request({"op": "red_packet.grab", "conversation": conversation, "mid": mid}, timeout=30)
                self.grab_results[key] = reply["share_cents"]
                return
            except ClientError as error:
                if error.code == "red_packet.already_grabbed" and lost_connection:
                    # the first try went through before its socket dropped or its wait ran out:
                    # the right answer to our retry, not an error of the server
                    self.grab_results[key] = "already"
                    self._answered_retry(error.code)
                    return
                if error.code in ("red_packet.not_found", "unavailable", "internal"):
                    self.grab_retries[error.code] += 1
                    await asyncio.sleep(0.5)
                    continue
                self.grab_results[key] = f"refused: {error.code}"
                return
            except (ConnectionError, TimeoutError, asyncio.TimeoutError) as error:
                self.grab_retries[type(error).__name__] += 1
                lost_connection = True
                await asyncio.sleep(0.2)
        self.grab_results[key] = "failed"

    def _answered_retry(self, code: str) -> None:
        for index in range(len(self.errors) - 1, -1, -1):
            if self.errors[index][1] == code:
                del self.errors[index]
                self.retry_answers[code] += 1
                return

    # -- the live room

    async def room_traffic(self) -> None:
        chatters = self.viewers[:5]
        tick = 0
        while self.room_running:
            tick += 1
            if self.host.up.is_set():
                self.spawn(self._host_post(tick))
            if tick % 2 == 0:
                for viewer in chatters:
                    if viewer.up.is_set():
                        self.spawn(self._chat(viewer, tick))
            await asyncio.sleep(0.5)

    async def _host_post(self, tick: int) -> None:
        posted = self.now()
        try:
            reply = await self.host.request({"op": "room.post", "room": self.room, "text": f"host {tick}", "kind": "chat"})
        except (ClientError, ConnectionError, TimeoutError, asyncio.TimeoutError):
            return
        self.room_posts[reply["id"]] = (posted, self.now())

    async def _chat(self, viewer: Peer, tick: int) -> None:
        try:
            await viewer.request({"op": "room.post", "room": self.room, "text": f"{viewer.user} {tick}", "kind": "chat"})
        except (ClientError, ConnectionError, TimeoutError, asyncio.TimeoutError):
            pass

    # -- receivers' acks

    async def acker(self) -> None:
        while not self.stopping:
            await asyncio.sleep(5)
            for peer in self.online_receivers.values():
                if peer.to_ack and peer.up.is_set():
                    mids, peer.to_ack = peer.to_ack[:1000], peer.to_ack[1000:]
                    try:
                        await peer.request({"op": "ack", "mids": mids})
                    except (ClientError, ConnectionError, TimeoutError, asyncio.TimeoutError):
                        peer.to_ack.extend(mids)

    # -- the run

    async def probe_capacity(self) -> float:
        """Mixed sends in a closed loop (at most ``window`` without a 'sent'): ACKs per second."""
        self.window = self.args.probe_window
        seconds = self.args.probe_seconds
        start = self.now()
        measured_from, acked_then = None, 0
        while self.now() - start < seconds:
            if measured_from is None and self.now() - start >= seconds / 3:
                measured_from, acked_then = self.now(), len(self.answers)
            if len(self.pending) >= self.window:
                self.room_for_more.clear()
                try:
                    await asyncio.wait_for(self.room_for_more.wait(), 5)
                except asyncio.TimeoutError:
                    pass
                continue
            await self.send_mixed()
        assert measured_from is not None
        capacity = (len(self.answers) - acked_then) / (self.now() - measured_from)
        self.window = 0
        while self.pending and self.now() - start < seconds + 60:
            await asyncio.sleep(0.1)
        return capacity

    async def steady(self, rate: float, seconds: float) -> None:
        start = self.now()
        issued_here = 0
        next_progress = start + 30
        while self.now() - start < seconds:
            due = int((self.now() - start) * rate) - issued_here
            if due > 0:
                if len(self.pending) > self.args.max_waiting:
                    self.skipped += due  # not caught up later: the offered rate stays as set
                else:
                    for _ in range(min(due, 500)):
                        await self.send_mixed()
                issued_here += due
            if self.now() >= next_progress:
                self.progress()
                next_progress += 30
            await asyncio.sleep(0.01)

    def progress(self) -> None:
        codes = Counter(code for _, code in self.errors)
        rss, cpu = {}, {}
        for name, lives in self.lives.items():
            life = lives[-1]
            short = name.replace(" (survivor)", "").replace(" (victim)", "-v").replace(" (this process)", "")
            rss[short] = round(life.samples[-1][1]) if life.samples and life.ended is None else None
            recent = [c for c in life.cpu if c[0] >= self.now() - 30]
            cpu[short] = round(100 * (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])) if len(recent) > 1 and life.ended is None else None
        latencies, self.latencies = self.latencies, []
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        print(f"[soak] {self.now():7.1f}s sent {self.issued} acked {len(self.answers)} waiting {len(self.pending)} "
              f"resends {self.resends} skipped {self.skipped} ack p50/p99 {p50 * 1000:.0f}/{p99 * 1000:.0f} ms "
              f"errors {dict(codes)} RSS MB {rss} CPU % {cpu}", flush=True)


async def drain(soak: Soak, timeout: float) -> None:
    deadline = soak.now() + timeout
    while (soak.pending or soak.tasks) and soak.now() < deadline:
        await asyncio.sleep(0.2)


# -- the checks at the end


async def whole_history(client: Client, conversation: str) -> list[dict[str, Any]]:
    """Every message of ``conversation`` that ``client`` may see, newest first (pages of 200)."""
    messages: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        page = await client.history(conversation, before_seq=before, limit=200)
        messages.extend(page["messages"])
        before = page["next_before_seq"]
        if before is None:
            return messages


async def whole_sync(client: Client) -> tuple[set[int], dict[str, Any]]:
    """Every mid a full sync gives (all pages), and the first page."""
    first = await client.sync(limit=1000)
    mids = {m["mid"] for m in first["messages"]}
    cursor = first["next_before_mid"]
    while cursor is not None:
        page = await client.sync(before_mid=cursor, limit=1000)
        mids.update(m["mid"] for m in page["messages"])
        cursor = page["next_before_mid"]
    return mids, first


async def check_storage(soak: Soak) -> tuple[dict[str, Any], dict[str, set[int]]]:
    """Each conversation's history must hold exactly its ACKed messages, once, with seqs 1..n."""
    by_conversation: dict[str, list[str]] = defaultdict(list)
    for cmid, conversation in soak.conversation_of_cmid.items():
        by_conversation[conversation].append(cmid)
    problems: list[str] = []
    stored_mids: dict[str, set[int]] = {}
    counts = Counter()
    histories: dict[str, list[dict[str, Any]]] = {}
    gate = asyncio.Semaphore(4)  # a few at once: pages older than the Redis log come from the archive, slowly

    async def read(conversation: str, reader: str) -> None:
        async with gate, await soak.stack.connect(reader) as client:
            histories[conversation] = await whole_history(client, conversation)

    await asyncio.gather(*(read(c, next(soak.direct_pairs[m][1] for m in cmids) if c.startswith("p:") else soak.group_owner.user)
                           for c, cmids in by_conversation.items()))
    for conversation, cmids in by_conversation.items():
        messages = histories[conversation]
        stored_mids[conversation] = {m["mid"] for m in messages}
        seen: dict[str, tuple[int, int]] = {}
        for message in messages:
            cmid = message["client_msg_id"]
            if cmid in seen:
                counts["stored twice"] += 1
                problems.append(f"{conversation}: {cmid} stored twice ({seen[cmid]} and {(message['mid'], message['seq'])})")
            seen[cmid] = (message["mid"], message["seq"])
            if cmid not in soak.answers:
                counts["stored without a sent"] += 1
                problems.append(f"{conversation}: {cmid} stored but never ACKed")
            elif soak.answers[cmid] != seen[cmid]:
                counts["stored unlike its sent"] += 1
                problems.append(f"{conversation}: {cmid} ACKed as {soak.answers[cmid]}, stored as {seen[cmid]}")
        for cmid in cmids:
            if cmid in soak.answers and cmid not in seen:
                counts["ACKed but lost"] += 1
                problems.append(f"{conversation}: {cmid} ACKed as {soak.answers[cmid]} but not in history")
        seqs = sorted(m["seq"] for m in messages)
        if seqs != list(range(1, len(seqs) + 1)):
            counts["seq gaps"] += 1
            problems.append(f"{conversation}: seqs are not 1..n ({len(seqs)} messages, first gap near {next((i + 1 for i, s in enumerate(seqs) if s != i + 1), None)})")
    return {"conversations": len(by_conversation), "problems": dict(counts), "examples": problems[:10]}, stored_mids


async def check_receivers(soak: Soak, stored_mids: dict[str, set[int]]) -> dict[str, Any]:
    """Every receiver has every ACKed message meant for it after dedup by mid over its pushes,
    a full sync and history; and no pushed mid that was never ACKed."""
    acked_mid_cmid = {mid: cmid for cmid, (mid, _) in soak.answers.items()}
    expected: dict[str, set[int]] = defaultdict(set)
    for cmid, (mid, _) in soak.answers.items():
        conversation = soak.conversation_of_cmid[cmid]
        if conversation.startswith("p:"):
            expected[soak.direct_pairs[cmid][1]].add(mid)
        else:
            for peer in soak.group_online:
                if peer.user != soak.sender_of[cmid]:
                    expected[peer.user].add(mid)
    missing = unexpected = pushed = caught_up = push_duplicates = 0
    examples: list[str] = []
    for user in [*soak.receivers, *(p.user for p in soak.group_online)]:
        peer = soak.peer_by_user.get(user)
        received = set(peer.received) if peer is not None else set()
        push_duplicates += peer.push_duplicates if peer is not None else 0
        async with await soak.stack.connect(user) as client:
            synced, _ = await whole_sync(client)
        conversations = {soak.conversation_of_cmid[acked_mid_cmid[m]] for m in expected[user]}
        from_history = set().union(*(stored_mids.get(c, set()) for c in conversations)) if conversations else set()
        have = received | synced | from_history
        lost = expected[user] - have
        missing += len(lost)
        if lost:
            examples.append(f"{user}: {len(lost)} ACKed messages never reached it, e.g. {sorted(lost)[:3]}")
        strange = received - set(acked_mid_cmid)
        unexpected += len(strange)
        if strange:
            examples.append(f"{user}: pushed {len(strange)} mids that no sender got a 'sent' for")
        pushed += len(received & expected[user])
        caught_up += len(expected[user] - received)
    return {"receivers": len(soak.receivers) + len(soak.group_online), "deliveries": sum(map(len, expected.values())),
            "by_push": pushed, "by_sync_or_history": caught_up, "push_duplicates_removed": push_duplicates,
            "missing": missing, "unexpected": unexpected, "examples": examples[:10]}


async def check_unread(soak: Soak) -> dict[str, Any]:
    conversation_of = {c: pair for c, pair in soak.direct_pairs.items() if c in soak.answers}
    seq_problems, direct_problems = await _check_seqs_and_unread(soak.stack, conversation_of, soak.answers)
    group_cmids = [c for c in soak.answers if soak.conversation_of_cmid[c] == soak.group]
    last_seq = max((soak.answers[c][1] for c in group_cmids), default=0)
    own_last: dict[str, int] = defaultdict(int)
    for cmid in group_cmids:
        own_last[soak.sender_of[cmid]] = max(own_last[soak.sender_of[cmid]], soak.answers[cmid][1])
    group_problems: list[str] = []
    sample = [soak.group_owner.user, *(p.user for p in soak.group_online), *soak.group_offline_sample]
    for user in sample:
        async with await soak.stack.connect(user) as client:
            state = await client.sync(limit=1)
        got = {c["conversation"]: c["unread"] for c in state["conversations"]}
        want = last_seq - own_last[user]
        if got.get(soak.group) != want or state["total_unread"] != want:
            group_problems.append(f"{user}: unread {got.get(soak.group)} (total {state['total_unread']}), truth {want}")
    return {"direct_seq_problems": seq_problems, "direct_unread_problems": direct_problems,
            "group_members_checked": len(sample), "group_unread_problems": len(group_problems),
            "examples": group_problems[:5]}


async def check_packets(soak: Soak) -> dict[str, Any]:
    problems: list[str] = []
    grabs_total = 0
    by_sender: dict[str, list[int]] = defaultdict(list)
    for mid, packet in soak.packets.items():
        by_sender[packet["sender"]].append(mid)
    states: dict[int, dict[str, Any]] = {}
    for sender, mids in by_sender.items():
        async with await soak.stack.connect(sender) as client:
            for mid in mids:
                states[mid] = await client.request({"op": "red_packet.status", "conversation": soak.packets[mid]["conversation"], "mid": mid})
    for mid, packet in soak.packets.items():
        state = states[mid]
        grabs = state["grabs"]
        grabs_total += len(grabs)
        if sum(grabs.values()) + state["cents_left"] != packet["total"] or len(grabs) != packet["count"] - state["count_left"]:
            problems.append(f"{mid}: shares {grabs} + left {state['cents_left']} != total {packet['total']}")
        for user in packet["grabbers"]:
            result = soak.grab_results.get((mid, user))
            if isinstance(result, int) and grabs.get(user) != result:
                problems.append(f"{mid}: {user} was told {result} cents, the packet says {grabs.get(user)}")
            elif result == "already" and user not in grabs:
                problems.append(f"{mid}: {user} was told already_grabbed but has no share")
            elif not isinstance(result, int) and result != "already":
                problems.append(f"{mid}: {user}'s grab: {result}")
        for user in set(grabs) - set(packet["grabbers"]):
            problems.append(f"{mid}: a share for {user}, who never grabbed")
    return {"packets": len(soak.packets), "grabs": grabs_total, "problems": len(problems), "examples": problems[:10]}


def check_room(soak: Soak) -> dict[str, Any]:
    """Host posts (never dropped) must reach every viewer that was in the room from before the
    post until 3 s after its answer."""
    expected = missed = 0
    examples: list[str] = []
    for viewer in soak.viewers:
        for posted_id, (posted, answered) in soak.room_posts.items():
            if any(start < posted and answered + 3 < end for start, end in viewer.sessions):
                expected += 1
                if posted_id not in viewer.room_seen:
                    missed += 1
                    if len(examples) < 10:
                        examples.append(f"{viewer.user} (gateway {viewer.gateway}) missed a post made at {posted:.1f} s")
    return {"host_posts": len(soak.room_posts), "deliveries_expected": expected, "missed": missed, "examples": examples}


def memory_report(soak: Soak, warmup: float) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, lives in soak.lives.items():
        rows = []
        for life in lives:
            if not life.samples:
                continue
            end = life.ended if life.ended is not None else life.samples[-1][0]
            skip = min(warmup, (end - life.started) / 2)
            kept = [(t / 60, mb) for t, mb in life.samples if t >= life.started + skip]
            slope = least_squares_slope(kept)
            rows.append({"pid": life.pid, "from_s": round(life.started, 1), "to_s": round(end, 1), "samples": len(kept),
                         "first_mb": round(kept[0][1], 1) if kept else None, "last_mb": round(kept[-1][1], 1) if kept else None,
                         "peak_mb": round(max(mb for _, mb in life.samples), 1),
                         "cpu_percent": round(100 * (life.cpu[-1][1] - life.cpu[0][1]) / (life.cpu[-1][0] - life.cpu[0][0]))
                         if len(life.cpu) > 1 and life.cpu[-1][0] > life.cpu[0][0] else None,
                         "slope_mb_per_min": None if slope is None else round(slope, 3)})
        report[name] = rows
    return report


def classify_errors(soak: Soak) -> dict[str, Any]:
    grace = soak.args.grace_seconds
    windows = [(f["killed_at"], (f["ready_at"] if f["ready_at"] is not None else float("inf")) + grace) for f in soak.faults]
    during, outside = Counter(), Counter()
    for at, code in soak.errors:
        (during if any(a <= at <= b for a, b in windows) else outside)[code] += 1
    bad_during = {c: n for c, n in during.items() if c not in ALLOWED_DURING_FAULTS and not c.startswith("throttle.")}
    bad_outside = {c: n for c, n in outside.items() if not c.startswith("throttle.")}
    return {"during_faults": dict(during), "outside_faults": dict(outside), "not_allowed": {**bad_during, **{f"{c} (outside)": n for c, n in bad_outside.items()}}}


def log_problems(soak: Soak) -> dict[str, str]:
    found = {}
    for path in sorted(soak.folder.glob("*.log")):
        text = path.read_text(errors="replace")
        if "Traceback" in text:
            at = text.index("Traceback")
            found[path.name] = text[at:at + 1500]
    return found


async def main() -> int:
    parser = arguments(__doc__ or "", "artifacts/soak.json")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kill-every-seconds", type=float, default=120.0)
    parser.add_argument("--down-seconds", type=float, default=5.0, help="how long a killed process stays down")
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s; 0: --load times the measured capacity")
    parser.add_argument("--load", type=float, default=0.5)
    parser.add_argument("--probe-seconds", type=float, default=30.0)
    parser.add_argument("--probe-window", type=int, default=300)
    parser.add_argument("--group-share", type=float, default=0.05, help="share of messages into the 2,000-member group")
    parser.add_argument("--packet-share", type=float, default=0.02, help="share of messages that are red packets")
    parser.add_argument("--max-waiting", type=int, default=5000, help="sends without a 'sent' beyond which new sends are skipped")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--warmup-seconds", type=float, default=0.0, help="0: a fifth of the run, at most 300 s")
    parser.add_argument("--grace-seconds", type=float, default=30.0)
    parser.add_argument("--max-slope", type=float, default=0.5, help="MB/min above which a long-lived process is not flat")
    args = parser.parse_args()
    duration = args.minutes * 60
    warmup = args.warmup_seconds or min(300.0, duration / 5)
    soak = Soak(args)
    await asyncio.to_thread(soak.setup_stack)
    background: list[asyncio.Task] = []
    result: dict[str, Any] = {"minutes": args.minutes, "kill_every_seconds": args.kill_every_seconds}
    try:
        await soak.setup_users()
        background += [asyncio.create_task(soak.resender()), asyncio.create_task(soak.sample_rss()), asyncio.create_task(soak.acker())]
        if args.rate:
            rate = args.rate
        else:
            capacity = await soak.probe_capacity()
            rate = capacity * args.load
            result["capacity_msgs_per_s"] = round(capacity, 1)
            soak.note(f"capacity with this mix: {capacity:.0f} messages/s; soaking at {rate:.0f}/s")
        result["rate_msgs_per_s"] = round(rate, 1)
        room = asyncio.create_task(soak.room_traffic())
        start = soak.now()
        soak.soak_start = start
        faults = asyncio.create_task(soak.fault_schedule(start, start + duration))
        await soak.steady(rate, duration)
        soak.room_running = False
        await room
        await faults
        await drain(soak, 180)
        await asyncio.sleep(3)  # the last room batches
        soak.progress()
        result["unacked_after_drain"] = len(soak.pending)
        result["room"] = check_room(soak)
        soak.stopping = True
        for task in background:
            task.cancel()
        for peer in soak.peers:
            await peer.close()
        result.update(sent=soak.issued, acked=len(soak.answers), resends=soak.resends, skipped=soak.skipped,
                      duplicate_acks=soak.duplicates, answers_to_our_retries=dict(soak.retry_answers),
                      grab_retries=dict(soak.grab_retries), late_answers_to_abandoned_requests=dict(soak.late_answers),
                      reconnects=sum(p.reconnects for p in soak.peers), faults=soak.faults)
        result["errors"] = classify_errors(soak)
        result["memory"] = memory_report(soak, warmup)
        result["warmup_s"] = warmup
        # the traffic's figures first: the checks below take minutes on a long run's history
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        soak.note("checking history, deliveries, unread counts and red packets")
        result["storage"], stored_mids = await check_storage(soak)
        result["receivers"] = await check_receivers(soak, stored_mids)
        result["unread"] = await check_unread(soak)
        result["red_packets"] = await check_packets(soak)
        alive = {name: process.proc.poll() for name, process in soak._slots().items()}
        result["exited_unexpectedly"] = {name: code for name, code in alive.items() if code is not None}
    finally:
        soak.stopping = True
        for task in background:
            task.cancel()
        stop_problems = {}
        for process in reversed(soak.stack.processes):
            try:
                process.stop_gracefully()
            except AssertionError as error:
                stop_problems[process.log_path.name] = str(error)[-1500:]
        result["stop_problems"] = stop_problems
        result["tracebacks"] = log_problems(soak)
        result["logs"] = str(soak.folder)
    verdict = summarize(result, args.max_slope)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0 if verdict else 1


def summarize(result: dict[str, Any], max_slope: float) -> bool:
    """Print the figures; True if every check passed."""
    print(json.dumps(result, indent=2, default=str))
    failures = []
    for name, rows in result["memory"].items():
        for row in rows:
            print(f"RSS {name:22s} pid {row['pid']:>7} {row['from_s']:7.1f}-{row['to_s']:7.1f} s: "
                  f"{row['first_mb']} -> {row['last_mb']} MB (peak {row['peak_mb']}, CPU {row['cpu_percent']} %), slope {row['slope_mb_per_min']} MB/min over {row['samples']} samples")
        if "survivor" in name and rows and rows[-1]["slope_mb_per_min"] is not None and rows[-1]["slope_mb_per_min"] > max_slope:
            failures.append(f"{name}: RSS grows {rows[-1]['slope_mb_per_min']} MB/min")
    if result["errors"]["not_allowed"]:
        failures.append(f"error frames not allowed: {result['errors']['not_allowed']}")
    if result.get("unacked_after_drain"):
        failures.append(f"{result['unacked_after_drain']} sends never got a 'sent'")
    if result.get("duplicate_acks"):
        failures.append(f"{result['duplicate_acks']} cmids ACKed twice differently")
    if result["storage"]["problems"]:
        failures.append(f"storage: {result['storage']['problems']}")
    if result["receivers"]["missing"] or result["receivers"]["unexpected"]:
        failures.append(f"receivers: {result['receivers']['missing']} missing, {result['receivers']['unexpected']} unexpected")
    unread = result["unread"]
    if unread["direct_seq_problems"] or unread["direct_unread_problems"] or unread["group_unread_problems"]:
        failures.append(f"unread/seq: {unread}")
    if result["red_packets"]["problems"]:
        failures.append(f"red packets: {result['red_packets']['examples'][:3]}")
    if result["room"]["missed"]:
        failures.append(f"room: {result['room']['missed']} host posts missed by viewers in the room")
    if result["exited_unexpectedly"]:
        failures.append(f"exited: {result['exited_unexpectedly']}")
    if result["stop_problems"]:
        failures.append(f"unclean stops: {list(result['stop_problems'])}")
    print(f"sent {result['sent']} acked {result['acked']} at {result['rate_msgs_per_s']} msg/s; "
          f"errors during faults {result['errors']['during_faults']}, outside {result['errors']['outside_faults']}")
    print("PASS" if not failures else "FAIL:\n  " + "\n  ".join(failures))
    return not failures


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
