"""Kafka broker loss under load: what senders feel when brokers die, restart or stop.

    scripts/bench broker-faults [--runs 3] [--rate 300] [--scenario cluster|solo|both] [--verbose]

``cluster`` runs on the 3-broker cluster of ``scripts/services cluster`` (replication factor 3,
min.insync.replicas 2; started if it is not running). Under a steady stream of sends:
``kill -9`` of the broker that leads most partitions of the ingest topic, its restart,
``kill -9`` of another broker, its restart, then a rolling restart (SIGTERM, start) of all
three; each step waits until every partition is fully in sync again before the next fault.

``solo`` runs on a private single broker (``scripts/services solo``, never the shared one that
tests and other runs use): the broker is stopped for 20 s and started again. Meanwhile the
gateways must answer every send (``unavailable`` while the broker is away, never silence) and
``/readyz`` must name Kafka as the dependency that is out.

Senders resend a message with the same cmid until it is ACKed (a message in flight during a
fault is not lost to the count), as ``imflow.client.Client.send`` does. Checked at the end of
every run: every message was ACKed, with one (mid, seq) per cmid; each conversation's seqs are
exactly 1..n; each receiver (online all along) got a push of every ACKed message, in seq order
after dropping repeated mids; each receiver's unread counts equal the number of messages sent
to it; no imflow process exited. Reported per fault: the longest gap between consecutive ACKs
from the fault until the next step (the pause users feel) and the longest send → ACK of a
message sent meanwhile. The suite runs one run of each scenario (tests/test_faults_kafka.py);
docs/benchmarks.md reports medians of ``--runs``. ``--kafka`` (scripts/bench passes the shared
broker) and ``--workers`` are not used: the scenarios bring their own brokers and one worker.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

if __package__ in (None, ""):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.stack import Stack, arguments, unread_problems
from imflow.client import Client, ClientError
from imflow.core.agents import topic_name
from imflow.core.models import direct_conversation

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services"
SOLO_OUTAGE_S = 20.0
# solo: a send frame not answered within this counts as a hang (a gateway answers within its
# producer's queue and delivery timeouts, 2 + 10 s; frames also queue on a loaded machine)
SILENCE_S = 30.0


# ---------------------------------------------------------------- the brokers


def services(*args: str, timeout: float = 240) -> str:
    """Run ``scripts/services ARGS`` and return its standard output; raises CalledProcessError
    (with the script's messages) if it fails, TimeoutExpired after ``timeout`` seconds."""
    done = subprocess.run([str(SERVICES), *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout


def cluster_env(name: str) -> dict[str, str]:
    """Start the cluster ``name`` ("cluster" or "solo") unless it runs, and return the IMFLOW_*
    variables that point imflow at it (IMFLOW_KAFKA_URL, IMFLOW_TOPIC_REPLICATION_FACTOR)."""
    services(name, "up")
    return dict(line.split("=", 1) for line in services(name, "env").split())


def bootstrap_of(kafka_url: str) -> str:
    return kafka_url.split("://", 1)[-1]


async def describe(bootstrap: str) -> list[dict[str, Any]]:
    """Every topic of the cluster with its partitions' leader, replicas and in-sync replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    await admin.start()
    try:
        return await admin.describe_topics()
    finally:
        await admin.close()


async def leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Node id -> how many partitions of ``topic`` it leads now."""
    counts: dict[int, int] = defaultdict(int)
    for found in await describe(bootstrap):
        if found["topic"] == topic:
            for partition in found["partitions"]:
                counts[partition["leader"]] += 1
    return dict(counts)


async def wait_in_sync(bootstrap: str, nodes: int, timeout: float = 90.0) -> float:
    """Wait until every partition of every topic has all its replicas in sync (and a leader);
    returns the seconds it took. Raises AssertionError with the laggards after ``timeout``."""
    started = time.monotonic()
    lagging: list[str] = ["(not asked yet)"]
    while time.monotonic() - started < timeout:
        try:
            topics = await describe(bootstrap)
            lagging = [
                f"{t['topic']}[{p['partition']}] isr={p['isr']} replicas={p['replicas']}"
                for t in topics for p in t["partitions"]
                if p["leader"] < 0 or sorted(p["isr"]) != sorted(p["replicas"]) or len(p["replicas"]) < min(nodes, 3)
            ]
            if not lagging:
                return time.monotonic() - started
        except Exception as exc:  # a broker just restarted: ask again
            lagging = [repr(exc)]
        await asyncio.sleep(0.5)
    raise AssertionError(f"partitions not in sync after {timeout}s: {lagging[:5]}")


async def progress(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, tuple[int, int | None]]:
    """Partition -> (end offset, the group's committed offset): which side of Kafka lags."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    await consumer.start()
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group)
        return {tp.partition: (ends[tp], committed[tp].offset if tp in committed else None) for tp in tps}
    finally:
        await consumer.stop()
        await admin.close()


async def delete_topics_of(bootstrap: str, app_id: str) -> None:
    """Delete the run's topics (``<app_id>.*`` and Faust's ``<app_id>-*``): runs do not pile
    up partitions that every later broker restart would have to load."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith((f"{app_id}.", f"{app_id}-"))]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


# ---------------------------------------------------------------- the load


@dataclass
class FaultGap:
    fault: str  # which step, the same in every run: "kill -9 the leader", "restart it", ...
    detail: str  # what exactly, e.g. "node 2, led 4/8 ingest partitions"
    at_s: float  # when, in seconds since the steady traffic started
    longest_ack_gap_s: float  # the longest time without any ACK, from the fault until the next step
    longest_wait_s: float  # the longest send → ACK of a message first sent in that window
    unavailable: int  # 'unavailable' answers to sends in that window


@dataclass
class BrokerFaultRun:
    scenario: str
    rate: float  # sends per second offered
    sent: int  # distinct messages (cmids)
    acked: int
    attempts: int  # send frames, resends included
    unavailable: int  # sends answered with 'unavailable' (then resent)
    silent_attempts: int  # sends with no answer at all within the attempt timeout (then resent)
    connections_lost: int  # sender connections that closed under them (then opened again, pending sends resent)
    longest_answer_s: float  # the longest any send frame waited for an answer ('sent' or an error)
    duplicates: int  # a cmid ACKed with two different (mid, seq): must be 0
    seq_problems: int  # conversations whose ACKed seqs are not exactly 1..n: must be 0
    push_problems: int  # receivers missing a push of an ACKed message, or getting one out of seq order: must be 0
    repeated_pushes: int  # pushes of a mid the receiver had already (allowed: clients drop them by mid)
    unread_problems: int  # receivers whose unread counts differ from the truth: must be 0
    other_errors: list[str] = field(default_factory=list)  # error frames other than 'unavailable', lost connections
    exited: list[str] = field(default_factory=list)  # imflow processes that exited during the run: must be none
    faults: list[FaultGap] = field(default_factory=list)
    readyz: list[str] = field(default_factory=list)  # solo: what each gateway's /readyz said while the broker was out
    replicas: dict[str, int] = field(default_factory=dict)  # cluster: replicas of each topic of the run and of __consumer_offsets
    notes: list[str] = field(default_factory=list)  # tracebacks in the processes' logs and the like

    def problems(self) -> list[str]:
        """What broke the promises above, in words; empty when the run passed."""
        found = []
        if self.acked != self.sent:
            found.append(f"{self.sent - self.acked} of {self.sent} messages never ACKed")
        for name in ("duplicates", "seq_problems", "push_problems", "unread_problems"):
            if getattr(self, name):
                found.append(f"{name}: {getattr(self, name)}")
        if self.other_errors:
            found.append(f"errors other than unavailable: {self.other_errors[:5]}")
        if self.exited:
            found.append(f"processes exited: {self.exited}")
        return found


class Sender:
    """One sending user's connection, opened again when it is lost (as a client app does)."""

    def __init__(self, stack: Stack, user: str, gateway: int) -> None:
        self.stack, self.user, self.gateway = stack, user, gateway
        self.client: Client | None = None
        self.lost = 0  # connections lost (and opened again)
        self._lock = asyncio.Lock()

    async def current(self) -> Client:
        """The open connection, (re)connecting first if there is none."""
        async with self._lock:
            while self.client is None or self.client.closed:
                try:
                    self.client = await self.stack.connect(self.user, self.gateway)
                except Exception:  # the gateway is busy or away: try again
                    await asyncio.sleep(0.5)
            return self.client

    async def drop(self, client: Client) -> None:
        """``client`` failed: close it, so the next ``current`` connects anew."""
        async with self._lock:
            if client is self.client:
                self.lost += 1
                self.client = None
                await client.close()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


class Load:
    """Sends at ``rate``/s from 10 senders (spread over the gateways) to 64 receivers (online on
    the last gateway), each message resent with its cmid until ACKed; records every answer."""

    def __init__(self, stack: Stack, rate: float, attempt_timeout: float, verbose: bool = False, bootstrap: str = "") -> None:
        self.stack, self.rate, self.attempt_timeout, self.verbose = stack, rate, attempt_timeout, verbose
        self.bootstrap = bootstrap  # for the diagnosis of a flow that does not recover
        self.run = uuid.uuid4().hex[:6]
        self.loop = asyncio.get_running_loop()
        self.senders: list[Sender] = []
        self.receivers: list[Client] = []
        self.sent_at: dict[str, float] = {}
        self.acked_at: dict[str, float] = {}
        self.answers: dict[str, tuple[int, int]] = {}
        self.conversation_of: dict[str, tuple[str, str]] = {}  # cmid -> (sender, receiver)
        self.duplicates = 0
        self.attempts = 0
        self.unavailable_at: list[float] = []
        self.silent_attempts = 0
        self.longest_answer = 0.0
        self.other_errors: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.index = 0
        self.started_at = 0.0
        self._sending: asyncio.Task[None] | None = None
        self._progress: asyncio.Task[None] | None = None

    async def open(self) -> None:
        gateways = len(self.stack.urls)
        self.receivers = [await self.stack.connect(f"r{i}-{self.run}", gateways - 1) for i in range(64)]
        self.senders = [Sender(self.stack, f"s{i}-{self.run}", i) for i in range(10)]
        for sender in self.senders:
            await sender.current()

    async def warm_up(self, timeout: float = 120.0) -> None:
        """One message to each receiver (so to every partition), all ACKed."""
        for _ in range(len(self.receivers)):
            self._send_next()
        await self.wait_backlog(0.0, timeout)

    def start(self) -> None:
        self.started_at = self.loop.time()
        self._sending = asyncio.create_task(self._steady())
        if self.verbose:
            self._progress = asyncio.create_task(self._report())

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(2.0)
            print(f"[broker-faults] +{self.since_start(self.loop.time())}s sent {len(self.sent_at)} ACKed {len(self.acked_at)} "
                  f"backlog {self.backlog(1.0)} unavailable {len(self.unavailable_at)} silent {self.silent_attempts} "
                  f"connections lost {sum(s.lost for s in self.senders)}", flush=True)

    async def _steady(self) -> None:
        first = self.index
        while True:
            self._send_next()
            await asyncio.sleep(max(0.0, self.started_at + (self.index - first) / self.rate - self.loop.time()))

    def _send_next(self) -> None:
        index = self.index
        self.index += 1
        sender = self.senders[index % len(self.senders)]
        receiver = self.receivers[index % len(self.receivers)].user
        cmid = f"m{index}-{self.run}"
        self.conversation_of[cmid] = (sender.user, receiver)
        task = asyncio.create_task(self._deliver(sender, {"to": receiver, "body": {"text": f"#{index}"}}, cmid))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _deliver(self, sender: Sender, target: dict[str, Any], cmid: str) -> None:
        """Send until ACKed, as a client app does: after an 'unavailable' resend after a pause
        (0.5 s, doubling up to 5 s: the browser client's outbox resends every 5 s); after
        silence resend once the attempt timed out, the timeout doubling from
        ``attempt_timeout`` up to 30 s (resending every few seconds into a backlog would only
        feed it); after a lost connection, reconnect and resend."""
        self.sent_at[cmid] = self.loop.time()
        backoff, timeout = 0.5, self.attempt_timeout
        while True:
            client = await sender.current()
            self.attempts += 1
            started = self.loop.time()
            try:
                frame = await client.send(target, cmid, timeout=timeout, attempts=1)
            except ClientError as exc:
                self.longest_answer = max(self.longest_answer, self.loop.time() - started)
                if exc.code != "unavailable":
                    self.other_errors.append(f"{cmid}: {exc}")
                    return
                self.unavailable_at.append(self.loop.time())
                await asyncio.sleep(backoff)  # as a client would: back off, resend the same cmid
                backoff = min(5.0, backoff * 2)
                continue
            except TimeoutError:
                self.longest_answer = max(self.longest_answer, self.loop.time() - started)
                self.silent_attempts += 1
                timeout = min(30.0, timeout * 2)
                continue
            except ConnectionError:
                await sender.drop(client)
                continue
            now = self.loop.time()
            self.longest_answer = max(self.longest_answer, now - started)
            answer = (frame["mid"], frame["seq"])
            if cmid in self.answers and self.answers[cmid] != answer:
                self.duplicates += 1
            self.answers[cmid] = answer
            self.acked_at.setdefault(cmid, now)
            return

    def backlog(self, older_than: float) -> int:
        """Messages first sent more than ``older_than`` seconds ago and not ACKed yet."""
        limit = self.loop.time() - older_than
        return sum(1 for cmid, at in self.sent_at.items() if at <= limit and cmid not in self.acked_at)

    async def wait_backlog(self, older_than: float, timeout: float) -> None:
        """Wait until everything sent more than ``older_than`` s ago is ACKed (the flow has recovered)."""
        deadline = self.loop.time() + timeout
        while self.backlog(older_than):
            if self.loop.time() > deadline:
                raise AssertionError(f"{self.backlog(older_than)} messages still un-ACKed after {timeout}s; {await self.diagnosis()}")
            await asyncio.sleep(0.2)

    async def wait_recovered(self, since: float, timeout: float = 90.0) -> None:
        """Wait until the flow has recovered from a fault at ``since``: a message first sent
        after it was ACKed, and nothing sent more than 2 s ago waits any more."""
        deadline = self.loop.time() + timeout
        while not any(self.sent_at[c] >= since for c in self.acked_at if c in self.sent_at) or self.backlog(2.0):
            if self.loop.time() > deadline:
                raise AssertionError(f"not recovered {timeout}s after the fault: {self.backlog(2.0)} messages un-ACKed; {await self.diagnosis()}")
            await asyncio.sleep(0.2)

    async def diagnosis(self) -> str:
        """Where the un-ACKed messages are stuck: their ingest partitions, and per partition the
        topic's end offset against the worker group's committed offset (the producing side
        stuck: the end does not move; the consuming side: the committed offset lags)."""
        partitions = int(self.stack.env.get("IMFLOW_TOPIC_PARTITIONS", "8"))
        limit = self.loop.time() - 2.0
        stuck: dict[int, int] = defaultdict(int)
        for cmid, at in self.sent_at.items():
            if at <= limit and cmid not in self.acked_at:
                sender, receiver = self.conversation_of[cmid]
                key = direct_conversation(sender, receiver).encode()
                stuck[DefaultPartitioner()(key, list(range(partitions)), list(range(partitions)))] += 1
        text = f"un-ACKed by ingest partition {dict(sorted(stuck.items()))}"
        if self.bootstrap:
            app_id = self.stack.env["IMFLOW_APP_ID"]
            try:
                text += f"; (end, committed) offsets {await progress(self.bootstrap, topic_name(app_id, 'ingest'), app_id, partitions)}"
            except Exception as exc:
                text += f"; offsets unknown ({exc!r})"
        return text

    async def stop(self, timeout: float = 120.0) -> None:
        """Stop sending new messages and wait (at most ``timeout`` s) for the ones in flight."""
        for task in (self._sending, self._progress):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.tasks:
            _, late = await asyncio.wait(set(self.tasks), timeout=timeout)
            for task in late:
                task.cancel()

    def since_start(self, at: float) -> float:
        return round(at - self.started_at, 2)

    def window(self, fault: str, detail: str, start: float, end: float) -> FaultGap:
        """The ACK gap and waits of the window [start, end) that follows a fault."""
        acks = sorted(self.acked_at.values())
        inside = [at for at in acks if start <= at < end]
        after = [at for at in acks if at >= end][:1]  # a pause that runs past the window is its own
        points = [start, *inside, *after]
        gaps = [b - a for a, b in zip(points, points[1:], strict=False)] or [0.0]
        waits = [self.acked_at[c] - at for c, at in self.sent_at.items() if start <= at < end and c in self.acked_at]
        return FaultGap(
            fault=fault, detail=detail, at_s=self.since_start(start), longest_ack_gap_s=round(max(gaps), 3),
            longest_wait_s=round(max(waits, default=0.0), 3),
            unavailable=sum(1 for at in self.unavailable_at if start <= at < end),
        )

    async def verify(self, scenario: str) -> BrokerFaultRun:
        """The checks of the module docstring, on what was recorded and on the server's state."""
        seqs: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)  # conversation -> (seq, mid)
        for cmid, pair in self.conversation_of.items():
            if cmid in self.answers:
                mid, seq = self.answers[cmid]
                seqs[pair].append((seq, mid))
        seq_problems = sum(1 for found in seqs.values() if sorted(s for s, _ in found) != list(range(1, len(found) + 1)))
        # a receiver that lost its connection would have to sync: its pushes no longer tell
        self.other_errors += [f"receiver {c.user} lost its connection ({c.websocket.close_code})" for c in self.receivers if c.closed]
        push_problems, repeated = await self._check_pushes(seqs)
        unread_problems = await self._check_unread(seqs)
        return BrokerFaultRun(
            scenario=scenario, rate=self.rate, sent=len(self.sent_at), acked=len(self.acked_at), attempts=self.attempts,
            unavailable=len(self.unavailable_at), silent_attempts=self.silent_attempts,
            connections_lost=sum(sender.lost for sender in self.senders),
            longest_answer_s=round(self.longest_answer, 3), duplicates=self.duplicates, seq_problems=seq_problems,
            push_problems=push_problems, repeated_pushes=repeated, unread_problems=unread_problems,
            other_errors=self.other_errors[:20],
        )

    async def _check_pushes(self, seqs: dict[tuple[str, str], list[tuple[int, int]]]) -> tuple[int, int]:
        expected: dict[str, dict[str, list[int]]] = defaultdict(dict)  # receiver -> conversation -> mids by seq
        for (sender, receiver), found in seqs.items():
            expected[receiver][direct_conversation(sender, receiver)] = [mid for _, mid in sorted(found)]
        problems = repeated = 0
        for client in self.receivers:
            # the pushes of the last ACKs may still be on their way: wait for them a little
            got = await self._pushed(client, sum(len(m) for m in expected[client.user].values()))
            firsts: dict[str, list[int]] = defaultdict(list)
            seen: set[int] = set()
            for message in got:
                if message["mid"] in seen:
                    repeated += 1
                    continue
                seen.add(message["mid"])
                firsts[message["conversation"]].append(message["mid"])
            if dict(firsts) != expected[client.user]:
                problems += 1
        return problems, repeated

    async def _pushed(self, client: Client, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        mids: set[int] = set()
        deadline = self.loop.time() + timeout
        while len(mids) < count and self.loop.time() < deadline:
            try:
                push = await asyncio.wait_for(client.pushes.get(), max(0.01, deadline - self.loop.time()))
            except TimeoutError:
                break
            if push.get("op") == "msg":
                got.append(push["message"])
                mids.add(push["message"]["mid"])
        while not client.pushes.empty():  # and whatever else came
            push = client.pushes.get_nowait()
            if push.get("op") == "msg":
                got.append(push["message"])
        return got

    async def _check_unread(self, seqs: dict[tuple[str, str], list[tuple[int, int]]]) -> int:
        return await unread_problems(self.stack, {pair: len(found) for pair, found in seqs.items()})

    async def close(self) -> None:
        for sender in self.senders:
            await sender.close()
        for client in self.receivers:
            await client.close()


def exited(stack: Stack) -> list[str]:
    return [f"{p.log_path.name} (exit {p.proc.returncode})" for p in stack.processes if p.proc.poll() is not None]


def stop_stack(stack: Stack) -> list[str]:
    """Stop every process with SIGTERM; notes on those that did not stop cleanly or logged tracebacks."""
    notes = []
    for process in reversed(stack.processes):
        code = process.terminate()
        if code not in (0, -15):
            notes.append(f"{process.log_path.name} exited with {code} on SIGTERM")
        tracebacks = process.output().count("Traceback")
        if tracebacks:
            notes.append(f"{process.log_path.name}: {tracebacks} tracebacks in {process.log_path}")
    return notes


# ---------------------------------------------------------------- the scenarios


async def run_cluster(redis_url: str, rate: float, hold_s: float = 1.0, verbose: bool = False,
                      rolling: bool = True) -> BrokerFaultRun:
    """kill -9 of the ingest leaders' broker, restart, kill -9 of another, restart, and (with
    ``rolling``) a rolling restart; each step waits until the flow has recovered (and the
    replicas are in sync), then ``hold_s`` seconds more. The test suite runs it without the
    rolling restart (a minute more); ``scripts/bench broker-faults`` with it."""
    env = cluster_env("cluster")
    bootstrap = bootstrap_of(env["IMFLOW_KAFKA_URL"])
    await wait_in_sync(bootstrap, 3)  # a fault test must start from a healthy cluster
    stack = Stack(env["IMFLOW_KAFKA_URL"], redis_url, workers=1, gateways=2, env=env)
    ingest = topic_name(stack.env["IMFLOW_APP_ID"], "ingest")
    steps: list[tuple[str, str, float]] = []  # (step, detail, when)
    load = Load(stack, rate, attempt_timeout=5.0, verbose=verbose, bootstrap=bootstrap)
    run: BrokerFaultRun | None = None
    try:
        await load.open()
        await load.warm_up()
        load.start()
        await asyncio.sleep(2.0)

        def mark(step: str, detail: str) -> None:
            steps.append((step, detail, load.loop.time()))
            if verbose:
                print(f"[broker-faults] +{load.since_start(load.loop.time())}s {step} ({detail})", flush=True)

        async def kill(step: str, node: int, led: dict[int, int]) -> None:
            await asyncio.to_thread(services, "cluster", "kill", str(node))
            mark(step, f"node {node}, led {led.get(node, 0)}/{sum(led.values())} ingest partitions")  # it is dead now
            await load.wait_recovered(load.loop.time())  # leaders moved, resends went through, the backlog is gone
            await asyncio.sleep(hold_s)

        async def start(step: str, node: int) -> None:
            mark(step, f"node {node}")
            await asyncio.to_thread(services, "cluster", "start", str(node))
            await wait_in_sync(bootstrap, 3)
            await load.wait_backlog(2.0, 90)
            await asyncio.sleep(hold_s)

        app_id = stack.env["IMFLOW_APP_ID"]
        replicas = {t["topic"]: min(len(p["replicas"]) for p in t["partitions"]) for t in await describe(bootstrap)
                    if t["topic"].startswith((f"{app_id}.", f"{app_id}-", "__consumer_offsets"))}
        led = await leaders(bootstrap, ingest)
        first = max(led, key=led.get)
        await kill("kill -9 the ingest leaders' broker", first, led)
        await start("restart it", first)
        led = await leaders(bootstrap, ingest)
        second = max((n for n in led if n != first), key=led.get)
        await kill("kill -9 another broker", second, led)
        await start("restart it", second)
        for node in (1, 2, 3) if rolling else ():  # rolling restart: controlled shutdown, start, back in sync
            mark(f"rolling restart: SIGTERM node {node}", f"node {node}")  # from the signal: its shutdown moves leaders
            await asyncio.to_thread(services, "cluster", "stop", str(node))
            await start(f"rolling restart: start node {node}", node)
        end = load.loop.time()
        await load.stop()
        run = await load.verify("cluster")
        run.replicas = replicas
        ends = [at for *_, at in steps[1:]] + [end]
        run.faults = [load.window(step, detail, at, until) for (step, detail, at), until in zip(steps, ends, strict=True)]
        run.exited = exited(stack)
        return run
    finally:
        await tear_down(load, stack, run, "cluster", bootstrap)


async def tear_down(load: Load, stack: Stack, run: BrokerFaultRun | None, brokers: str, bootstrap: str) -> None:
    """After a scenario, whatever happened: stop the load and the processes (their notes go on
    the run), every broker of ``brokers`` ("cluster" or "solo") up again, the run's topics gone."""
    await load.stop(timeout=0)
    await load.close()
    notes = stop_stack(stack)
    if run is not None:
        run.notes = notes
    await asyncio.to_thread(services, brokers, "up")
    await delete_topics_of(bootstrap, stack.env["IMFLOW_APP_ID"])


async def readiness(url: str) -> str:
    """What /readyz says, in short: "<status code> <checks>", or why it did not answer in 5 s."""
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            answer = await http.get(url)
        return f"{answer.status_code} {json.dumps(answer.json().get('checks'), sort_keys=True)}"
    except Exception as exc:
        return f"no answer ({type(exc).__name__})"


async def run_solo(redis_url: str, rate: float, outage_s: float = SOLO_OUTAGE_S, hold_s: float = 2.0, verbose: bool = False) -> BrokerFaultRun:
    """The private single broker stopped for ``outage_s`` seconds and started again."""
    env = cluster_env("solo")
    bootstrap = bootstrap_of(env["IMFLOW_KAFKA_URL"])
    stack = Stack(env["IMFLOW_KAFKA_URL"], redis_url, workers=1, gateways=2, env=env)
    ready_urls = [url.replace("ws://", "http://").removesuffix("/ws") + "/readyz" for url in stack.urls]
    load = Load(stack, rate, attempt_timeout=SILENCE_S, verbose=verbose, bootstrap=bootstrap)
    seen: list[str] = []
    run: BrokerFaultRun | None = None
    try:
        await load.open()
        await load.warm_up()
        load.start()
        await asyncio.sleep(hold_s)
        stopped_at = load.loop.time()
        await asyncio.to_thread(services, "solo", "stop", "1")
        gone_at = load.loop.time()
        while load.loop.time() < gone_at + outage_s:  # what the gateways say while it is out
            answers = await asyncio.gather(*(readiness(url) for url in ready_urls))
            seen.extend(f"+{load.since_start(load.loop.time())}s gateway{i}: {a}" for i, a in enumerate(answers))
            await asyncio.sleep(1.0)
        await asyncio.to_thread(services, "solo", "start", "1")
        back_at = load.loop.time()  # it answers clients again
        await load.wait_recovered(back_at)
        for i, url in enumerate(ready_urls):  # ready again by itself
            deadline = load.loop.time() + 30
            while not (answer := await readiness(url)).startswith("200") and load.loop.time() < deadline:
                await asyncio.sleep(0.5)
            seen.append(f"after the restart gateway{i}: {answer}")
        await asyncio.sleep(hold_s)
        end = load.loop.time()
        await load.stop()
        run = await load.verify("solo")
        run.faults = [
            load.window("broker stopped", f"SIGTERM, {outage_s:.0f} s out, started again", stopped_at, back_at),
            load.window("broker back", "from its start to the flow's recovery", back_at, end),
        ]
        run.readyz = seen
        run.exited = exited(stack)
        return run
    finally:
        await tear_down(load, stack, run, "solo", bootstrap)


def summary(run: BrokerFaultRun) -> str:
    """One line per fault: when (seconds into the steady traffic), its longest ACK gap and longest send → ACK."""
    return "\n".join(
        f"  +{f.at_s:6.1f} s {(f'{f.fault} ({f.detail})' if f.detail else f.fault):<60} ACK gap {f.longest_ack_gap_s:6.2f} s   longest wait {f.longest_wait_s:6.2f} s   unavailable {f.unavailable}"
        for f in run.faults
    )


async def main() -> None:
    parser = arguments(__doc__ or "", "artifacts/broker_faults.json")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--scenario", choices=["cluster", "solo", "both"], default="both")
    parser.add_argument("--verbose", action="store_true", help="print the flow every 2 s")
    args = parser.parse_args()  # --kafka is the shared broker's: the scenarios bring their own
    scenarios = ["cluster", "solo"] if args.scenario == "both" else [args.scenario]
    results: list[BrokerFaultRun] = []
    for scenario in scenarios:
        for number in range(args.runs):
            runner = run_cluster if scenario == "cluster" else run_solo
            run = await runner(args.redis, args.rate, verbose=args.verbose)
            print(f"[broker-faults] {scenario} run {number + 1}/{args.runs}: sent {run.sent}, ACKed {run.acked}, "
                  f"longest answer to a send {run.longest_answer_s} s, "
                  f"unavailable {run.unavailable}, silent attempts {run.silent_attempts}, connections lost {run.connections_lost}, "
                  f"problems: {run.problems() or 'none'}\n{summary(run)}", flush=True)
            results.append(run)
    for scenario in scenarios:
        runs = [r for r in results if r.scenario == scenario]
        print(f"{scenario}: median of {len(runs)} runs")
        for i, fault in enumerate(runs[0].faults):
            gaps = [r.faults[i].longest_ack_gap_s for r in runs]
            waits = [r.faults[i].longest_wait_s for r in runs]
            print(f"  {fault.fault:<40} ACK gap {statistics.median(gaps):6.2f} s   "
                  f"longest wait {statistics.median(waits):6.2f} s   (runs: {', '.join(f'{g:.2f}' for g in gaps)})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    asyncio.run(main())
