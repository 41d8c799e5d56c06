"""The webhook plugin against a real HTTP receiver on 127.0.0.1: events signed (HMAC-SHA256 of the
body), batched, retried after 5xx with backoff, not retried after a 4xx, muted conversations
skipped, a full queue dropped and counted, and a receiver that hangs never slows a send (its
``sent`` ACK comes while the receiver holds the webhook's request). End to end on the embedded
stack and on Kafka + Redis; the sender and the hooks also in-process."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fakeredis
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError
from stacks import connect

from imflow.core.agents import AgentContext
from imflow.core.models import Message, direct_conversation
from imflow.core.offline_push import notify
from imflow.core.plugin_calls import Hooks, empty_manager
from imflow.core.plugin_types import Amendment, OfflinePush
from imflow.core.settings import Settings
from imflow.core.storage import conversation_settings
from imflow.plugins.webhook import EVENTS, Webhook, WebhookSettings
from imflow.plugins.webhook.sender import Delivery, Sender
from imflow.testing import eventually

SECRET = "webhook-test-secret-" + uuid.uuid4().hex


# -- the receiver: a real HTTP server in a thread, with faults on demand


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.payload["events"]


@dataclass
class Receiver:
    """What came (``received``, every attempt with the status it got) and the faults to play:
    ``failing[marker] = (status, times)`` answers ``status`` to the next ``times`` bodies holding
    ``marker``; while ``held`` is clear, every request waits for it (a receiver that hangs)."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    failing: dict[str, list[int]] = field(default_factory=dict)
    held: threading.Event = field(default_factory=threading.Event)
    waiting: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.held.set()

    def answer(self, body: bytes) -> int:
        with self.lock:
            for marker, plan in self.failing.items():
                if plan[1] > 0 and marker.encode() in body:
                    plan[1] -= 1
                    return plan[0]
        return 200

    def events(self, accepted: bool = True) -> list[dict[str, Any]]:
        return [event for r in list(self.received) if r.status == 200 or not accepted for event in r.events]

    def find(self, kind: str, test) -> list[dict[str, Any]]:
        """Accepted events of ``kind`` for which ``test(data)`` holds, in the order they came."""
        return [event for event in self.events() if event["type"] == kind and test(event["data"])]


def start_receiver() -> tuple[Receiver, ThreadingHTTPServer]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with receiver.lock:
                receiver.waiting += 1
            try:
                receiver.held.wait(60)
            finally:
                with receiver.lock:
                    receiver.waiting -= 1
            status = receiver.answer(body)
            receiver.received.append(Received(dict(self.headers.items()), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver, server


@pytest.fixture(scope="module")
def receiver():
    receiver, server = start_receiver()
    yield receiver
    receiver.held.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def fresh_receiver():
    receiver, server = start_receiver()
    yield receiver
    receiver.held.set()
    server.shutdown()
    server.server_close()


# the signature check of docs/plugins.md ("Built-in: webhook"), as a receiver writes it
def verify(secret: bytes, body: bytes, headers: dict[str, str], max_age_ms: int = 300_000) -> dict:
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, headers.get("X-Imflow-Signature", "")):
        raise ValueError("bad signature")
    payload = json.loads(body)
    if abs(time.time() * 1000 - payload["sent_at_ms"]) > max_age_ms:  # signed with the body: a replay fails here
        raise ValueError("too old")
    return payload


def assert_signed(request: Received) -> None:
    payload = verify(SECRET.encode(), request.body, request.headers)
    assert request.headers["X-Imflow-Timestamp"] == str(payload["sent_at_ms"])
    assert request.headers["Content-Type"] == "application/json"


# -- end to end, on both stacks


def webhook_env(url: str) -> dict[str, str]:
    return {
        "IMFLOW_WEBHOOK_URL": url,
        "IMFLOW_WEBHOOK_SECRET": SECRET,
        "IMFLOW_WEBHOOK_EVENTS": ",".join(EVENTS),
        "IMFLOW_WEBHOOK_BATCH_WAIT_MS": "100",
        "IMFLOW_WEBHOOK_BACKOFF_INITIAL_MS": "50",
        "IMFLOW_WEBHOOK_BACKOFF_MAX_MS": "200",
        "IMFLOW_WEBHOOK_TIMEOUT_SECONDS": "60",  # the hanging receiver is released by the test, not by a timeout
    }


@pytest.fixture(scope="module", params=["embedded", pytest.param("real", marks=[pytest.mark.kafka, pytest.mark.redis])])
def webhook_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, receiver: Receiver):
    from stacks import embedded_stack, real_stack

    from imflow.core.storage import redis_client

    folder = tmp_path_factory.mktemp(f"webhook-{request.param}")
    if request.param == "embedded":
        running = embedded_stack(folder, webhook_env(receiver.url))
    else:
        url = request.getfixturevalue("redis_url")
        redis_client.flush_sync(url)
        running = real_stack(folder, request.getfixturevalue("kafka_url"), url, extra_env=webhook_env(receiver.url))
    yield running
    receiver.held.set()
    running.stop()


async def test_messages_and_group_changes_arrive_signed_and_batched(webhook_stack, receiver: Receiver, users) -> None:
    alice = await connect(webhook_stack, users.alice)
    try:
        group = await alice.request({"op": "create_group", "name": "hooked", "members": [users.bob]})
        acks = await asyncio.gather(*(alice.send_text(users.bob, f"hello {i}") for i in range(30)))
        mids = {ack["mid"] for ack in acks}

        def sent_by_alice() -> list[dict]:
            return receiver.find("message_sent", lambda data: data["message"]["sender"] == users.alice)

        events = await eventually(lambda: _when(len({e["data"]["message"]["mid"] for e in sent_by_alice()}) == 30, sent_by_alice))
        first = next(e for e in events if e["data"]["message"]["mid"] == acks[0]["mid"])
        message = first["data"]["message"]
        assert first["id"] == f"message_sent:{message['mid']}" and first["at_ms"] == message["sent_at_ms"]
        assert message["conversation"] == direct_conversation(users.alice, users.bob) and message["body"] == {"text": "hello 0"}
        assert {e["data"]["message"]["mid"] for e in events} == mids

        ours = lambda: receiver.find("group_changed", lambda data: data["gid"] == group["gid"])  # noqa: E731
        changed = await eventually(lambda: _when(True, ours))
        assert changed[0]["data"] == {"gid": group["gid"], "kind": "joined", "actor": users.alice,
                                      "changes": {users.alice: "owner", users.bob: "member"}}

        mine = [r for r in list(receiver.received) if users.alice.encode() in r.body]
        for request in mine:
            assert_signed(request)
        assert max(sum(1 for e in r.events if e["type"] == "message_sent") for r in mine) > 1, "batched: several events per POST"
        assert len(mine) < 30
    finally:
        await alice.close()


async def _when(condition_holds: bool, value):
    """``value()`` if it is non-empty (and ``condition_holds``), for ``eventually``."""
    found = value()
    return found if found and condition_holds else None


async def test_offline_pushes_go_for_offline_users_but_not_muted_conversations(webhook_stack, receiver: Receiver, users) -> None:
    bob = await connect(webhook_stack, users.bob)
    await bob.request({"op": "set_conversation", "conversation": direct_conversation(users.bob, users.carol), "muted": True})
    await bob.close()
    alice, carol = await connect(webhook_stack, users.alice), await connect(webhook_stack, users.carol)
    dave = await connect(webhook_stack, users.dave)
    try:
        # bob's gateway drops his presence a little after the close: until then a message to him
        # is not an offline push. Dave's probes tell when it is gone (the first that is pushed).
        probes: set[int] = set()

        async def bob_is_offline() -> list[dict]:
            probes.add((await dave.send_text(users.bob, "probe"))["mid"])
            return receiver.find("offline_push", lambda d: d["user"] == users.bob and d["message"]["mid"] in probes)

        await eventually(bob_is_offline, timeout=30, interval=0.2)
        muted = await carol.send_text(users.bob, "you muted me")
        sent = await alice.send_text(users.bob, "are you there?")
        ours = (users.alice, users.carol)
        pushes = await eventually(lambda: _when(True, lambda: receiver.find(
            "offline_push", lambda d: d["user"] == users.bob and d["message"]["sender"] in ours)))
        assert [p["data"]["message"]["mid"] for p in pushes] == [sent["mid"]], "the muted conversation's message is not pushed"
        assert muted["mid"] not in {p["data"]["message"]["mid"] for p in pushes}
        push = pushes[0]
        assert push["id"] == f"offline_push:{sent['mid']}:{users.bob}"
        assert push["data"]["total"] >= 1 and push["data"]["mentions"] is False
    finally:
        await alice.close()
        await carol.close()
        await dave.close()


async def test_5xx_answers_are_retried_with_backoff_until_accepted(webhook_stack, receiver: Receiver, users) -> None:
    receiver.failing[users.alice] = [503, 2]
    alice = await connect(webhook_stack, users.alice)
    try:
        sent = await alice.send_text(users.bob, "retry me")
        await eventually(lambda: _when(True, lambda: receiver.find("message_sent", lambda d: d["message"]["mid"] == sent["mid"])))
        attempts = [r for r in list(receiver.received) if users.alice.encode() in r.body]
        assert [r.status for r in attempts][:3] == [503, 503, 200]
        ids = [sorted(e["id"] for e in r.events if e["type"] == "message_sent") for r in attempts[:3]]
        assert ids[0] == ids[1] == ids[2], "a retry sends the same events"
        for request in attempts[:3]:
            assert_signed(request)  # each attempt signed afresh
    finally:
        await alice.close()


async def test_a_hanging_receiver_never_slows_a_send(webhook_stack, receiver: Receiver, users) -> None:
    alice = await connect(webhook_stack, users.alice)
    receiver.held.clear()  # from now on the receiver answers nobody
    try:
        await alice.send_text(users.bob, "first")  # its events get the sender's POST stuck
        await eventually(lambda: _async(receiver.waiting >= 1), timeout=30)
        acks = await asyncio.gather(*(alice.send_text(users.bob, f"m{i}", timeout=20, attempts=1) for i in range(20)))
        assert len({ack["mid"] for ack in acks}) == 20
        assert receiver.waiting >= 1, "every ACK came while the receiver held the webhook's request"
        receiver.held.set()
        mids = {ack["mid"] for ack in acks}
        await eventually(lambda: _async(mids <= {e["data"]["message"]["mid"] for e in receiver.find(
            "message_sent", lambda d: d["message"]["sender"] == users.alice)}), timeout=60)
    finally:
        receiver.held.set()
        await alice.close()


async def _async(value):
    return value


# -- in-process: the hooks, the sender, the settings


def message(mid: int, sender: str, to: str, seq: int = 1) -> Message:
    return Message(mid=mid, seq=seq, conversation=direct_conversation(sender, to), sender=sender,
                   client_msg_id=f"c{mid}", body={"text": "hi"}, sent_at_ms=1_700_000_000_000 + mid)


def webhook(url: str, **overrides: Any) -> Webhook:
    return Webhook(WebhookSettings(url=url, secret=SECRET, batch_wait_ms=50, backoff_initial_ms=10, backoff_max_ms=50,
                                   **overrides))


async def started(plugin: Webhook) -> AgentContext:
    manager = empty_manager()
    manager.register(plugin, name="webhook")
    context = AgentContext(settings=Settings(), redis=fakeredis.FakeAsyncRedis(), hooks=Hooks(manager), producer=None,
                           node="worker-1")  # type: ignore[arg-type]  # no agent produces here
    await context.hooks.call.startup(services=context, role="worker")
    return context


async def test_offline_push_skips_muted_conversations_and_amendments_arrive(fresh_receiver: Receiver) -> None:
    plugin = webhook(fresh_receiver.url, events="offline_push,message_amended")
    context = await started(plugin)
    try:
        await conversation_settings.change(context.redis, "bob", direct_conversation("bob", "carol"), last_seq=0, muted=True)
        pending = [OfflinePush("bob", message(1, "carol", "bob"), 1), OfflinePush("bob", message(2, "alice", "bob"), 2, True)]
        await notify(context, pending)
        amendment = Amendment("recall", direct_conversation("alice", "bob"), 1, 2, "alice", 1_700_000_000_123,
                              {"mid": 2, "seq": 1, "body": {}})
        await context.hooks.call.message_amended(amendment=amendment, services=context)
        events = await eventually(lambda: _async(len(fresh_receiver.events()) >= 2 and fresh_receiver.events()), timeout=10)
        assert [e["type"] for e in events] == ["offline_push", "message_amended"]
        assert events[0]["id"] == "offline_push:2:bob"
        assert events[0]["data"]["total"] == 2 and events[0]["data"]["mentions"] is True
        data = {"kind": "recall", "conversation": "p:alice:bob", "seq": 1, "mid": 2, "by": "alice",
                "message": {"mid": 2, "seq": 1, "body": {}}}
        assert events[1] == {"id": "message_amended:2:recall:v1", "type": "message_amended",
                             "at_ms": 1_700_000_000_123, "data": data}
        assert fresh_receiver.received[0].payload["node"] == "worker-1"
        assert_signed(fresh_receiver.received[0])
    finally:
        await context.hooks.call.shutdown(services=context, role="worker")


def test_event_ids_tell_apart_changes_made_in_one_millisecond() -> None:
    """Two members leaving one group in one millisecond are two group_changed events; two
    edits of one message in one millisecond are two message_amended events (the version); the
    same change twice (a replay) is one id."""
    from imflow.core.plugin_types import GroupChange
    from imflow.plugins.webhook import group_changed_event, message_amended_event

    left = [GroupChange("g1", "left", {user: ""}, user, 1_700_000_000_000) for user in ("ann", "ben")]
    ids = [group_changed_event(change)["id"] for change in left]
    assert ids[0] != ids[1] and all(i.startswith("group_changed:g1:left:1700000000000:") for i in ids)
    assert group_changed_event(GroupChange("g1", "left", {"ann": ""}, "ann", 1_700_000_000_000))["id"] == ids[0]
    # the digest is of the sorted changes: the order a dict was built in does not count
    both, reordered = (GroupChange("g1", "removed", changes, "owner", 1)
                       for changes in ({"ann": "", "ben": ""}, {"ben": "", "ann": ""}))
    assert group_changed_event(both)["id"] == group_changed_event(reordered)["id"]
    edits = [Amendment("edit", "p:alice:bob", 1, 7, "alice", 1_700_000_000_000, {"mid": 7, "version": v}) for v in (2, 3)]
    assert [message_amended_event(edit)["id"] for edit in edits] == ["message_amended:7:edit:v2", "message_amended:7:edit:v3"]


def test_an_all_in_a_big_group_dumps_its_message_once(monkeypatch) -> None:
    """10,000 offline pushes of one @all: the message becomes JSON once, not once per user, and
    all of them fit the default queue."""
    plugin = Webhook(WebhookSettings(url="http://127.0.0.1:9/unused", events="offline_push"))
    dumps = 0
    real = Message.model_dump

    def counting(self, *args, **kwargs):
        nonlocal dumps
        dumps += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Message, "model_dump", counting)
    everyone, other = message(1, "alice", "bob"), message(2, "carol", "bob")
    pushes = [OfflinePush(f"u{i:05d}", everyone, 1, True) for i in range(10_000)] + [OfflinePush("bob", other, 2)]
    plugin.imflow_offline_push(pushes)
    assert dumps == 2, "once per message"
    assert plugin.sender is not None and plugin.sender.queue.qsize() == 10_001
    queued = [plugin.sender.queue.get_nowait() for _ in range(3)]
    assert queued[0]["data"]["message"] == queued[1]["data"]["message"] == everyone.model_dump()
    assert [e["id"] for e in queued] == [f"offline_push:1:u{i:05d}" for i in range(3)]


async def test_the_shutdown_drain_is_a_setting(fresh_receiver: Receiver) -> None:
    """``IMFLOW_WEBHOOK_SHUTDOWN_DRAIN_SECONDS``: how long a stopping process waits for what is
    queued (the receiver hangs here: it waits that long, then drops and counts)."""
    assert WebhookSettings().shutdown_drain_seconds == 2.0
    fresh_receiver.held.clear()
    plugin = webhook(fresh_receiver.url, events="group_changed", shutdown_drain_seconds=0.1, timeout_seconds=30)
    context = await started(plugin)
    dropped = counted("dropped", "group_changed")
    from imflow.core.plugin_types import GroupChange

    await context.hooks.call.group_changed(change=GroupChange("g9", "left", {"ann": ""}, "ann", 1), services=context)
    await eventually(lambda: _async(fresh_receiver.waiting == 1), timeout=10)
    started_at = time.monotonic()
    await context.hooks.call.shutdown(services=context, role="worker")
    assert time.monotonic() - started_at < 1.5, "0.1 s of drain, not the old fixed 2 s"
    assert counted("dropped", "group_changed") == dropped + 1


def counted(name: str, event: str) -> float:
    return REGISTRY.get_sample_value(f"imflow_webhook_events_{name}_total", {"event": event}) or 0.0


async def test_a_full_queue_drops_and_counts_and_a_4xx_is_not_retried(fresh_receiver: Receiver) -> None:
    sender = Sender(Delivery(url=fresh_receiver.url, secret=None, batch_wait_s=0.05, backoff_initial_s=0.01), queue_size=2)
    dropped, failed, sent = counted("dropped", "message_sent"), counted("failed", "message_sent"), counted("sent", "message_sent")
    events = [{"id": f"e{i}", "type": "message_sent", "at_ms": i, "data": {"marker": "refuse-me" if i == 1 else "ok"}}
              for i in range(3)]
    assert [sender.offer(event) for event in events] == [True, True, False]  # not started: the queue fills
    assert counted("dropped", "message_sent") == dropped + 1
    fresh_receiver.failing["refuse-me"] = [400, 5]
    sender.start("gw-1")
    try:
        await eventually(lambda: _async(counted("failed", "message_sent") == failed + 2), timeout=10)
        assert [r.status for r in fresh_receiver.received] == [400], "a 4xx is not retried: the same batch would be refused again"
        assert "X-Imflow-Signature" not in fresh_receiver.received[0].headers, "no secret, no signature"
        assert sender.offer(events[2])
        await eventually(lambda: _async(counted("sent", "message_sent") == sent + 1), timeout=10)
    finally:
        await sender.stop()


async def test_a_receiver_that_never_answers_is_given_up_on_after_the_last_attempt(fresh_receiver: Receiver) -> None:
    fresh_receiver.failing["x"] = [500, 100]
    sender = Sender(Delivery(url=fresh_receiver.url, secret=b"k", batch_wait_s=0, attempts=3, backoff_initial_s=0.01,
                             backoff_max_s=0.02), queue_size=10)
    failed = counted("failed", "group_changed")
    sender.start("gw-1")
    try:
        sender.offer({"id": "g", "type": "group_changed", "at_ms": 1, "data": {"x": 1}})
        await eventually(lambda: _async(counted("failed", "group_changed") == failed + 1), timeout=10)
        assert [r.status for r in fresh_receiver.received] == [500, 500, 500]
    finally:
        await sender.stop()


async def test_stopping_counts_what_is_left_as_dropped(fresh_receiver: Receiver) -> None:
    fresh_receiver.held.clear()
    sender = Sender(Delivery(url=fresh_receiver.url, secret=None, batch_size=1, batch_wait_s=0, timeout_s=30), queue_size=10)
    dropped = counted("dropped", "offline_push")
    sender.start("gw-1")
    for i in range(3):
        sender.offer({"id": f"p{i}", "type": "offline_push", "at_ms": i, "data": {}})
    await eventually(lambda: _async(fresh_receiver.waiting == 1), timeout=10)
    await sender.stop(drain_s=0.2)  # the receiver hangs: neither the event in flight nor the two waiting can go
    assert counted("dropped", "offline_push") == dropped + 3


def test_settings_are_checked_and_off_means_no_event_hooks() -> None:
    off = Webhook(WebhookSettings(url=""))
    assert off.events == frozenset() and off.sender is None
    manager = empty_manager()
    manager.register(off, name="webhook")
    hooks = Hooks(manager)
    for hook in ("imflow_offline_push", "imflow_after_persist", "imflow_group_changed", "imflow_message_amended"):
        assert not hooks.has_implementations(hook), f"{hook}: an idle webhook costs the core nothing"
    on = Webhook(WebhookSettings(url="https://example.test/hook", events=" offline_push , group_changed"))
    assert on.events == {"offline_push", "group_changed"}
    assert WebhookSettings(url="http://x", secret="").secret is None, "an empty secret means unsigned"
    for bad in ({"url": "ftp://x"}, {"url": "example.test"}, {"events": "offline_push,typo"}, {"queue_size": 0}):
        with pytest.raises(ValidationError):
            WebhookSettings(**bad)
