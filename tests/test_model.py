"""The protocol's reference model (tests/protocol_model.py) against the real server.

A hypothesis state machine drives random sequences of operations over the real WebSocket
protocol, on the embedded stack and on two gateways plus a worker on Kafka and Redis, and
compares every reply and every push with what the model predicts. Each example has users of
its own (a fresh suffix), so examples never see each other's messages.

Accounts are ``registered``: each example creates its users' accounts through the admin API,
keeps one user id without an account (the ghost: ``not_found`` wherever it is named), and the
admin deactivates and reactivates some of the phantoms (``user_deactivated``). Besides messages
and groups the users ask each other to be contacts, accept, decline, cancel, remove, block and
unblock, switch ``dm`` between anyone and contacts, look at profiles, contact lists and block
lists, and set conversations' settings; the model says which one-to-one sends and group
additions that refuses (``blocked``, ``contacts_only``) and checks every ``contact``,
``privacy`` and ``conversation_settings`` reply and push. A refused message is in no push,
sync page, history page or unread count.

Messages are recalled (by their sender, by a group's owner or admin, or refused to someone
else: ``message.not_yours``; again: the same tombstone, nothing pushed) and edited (a new
version, the same body again: nothing new; a red packet: ``message.not_text``; a recalled one:
``message.recalled``; a body outside the text schema: ``bad_frame``), and their receipts and
readers asked for, in groups on either side of the read fan-out threshold
(``receipts_unavailable``). The windows are an hour here; tests/test_model_regressions.py has
``message.too_late`` with windows of a second.

Pushes: each device (one connection) records every frame that answers no request of its own.
After each step a barrier makes sure that everything the server published so far has arrived
(``ProtocolMachine._barrier``: a sentinel user's read is pushed through every gateway's channel
after it, then a ping on each connection), and every device's pushes are compared in order
with the model's, none missing and none extra. No sleeps: every wait is for a condition.

Besides the rules' own checks, after every step one user in turn pages through all of sync and
through one conversation's history from the top and from the edges.

Bounded in the suite (profile "ci"); ``IMFLOW_MODEL_PROFILE=long`` or ``scripts/bench model``
runs longer. A failure prints the seed and the shrunk steps; keep those as an ordinary test in
tests/test_model_regressions.py.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, get_state_machine_test, invariant, precondition, rule
from protocol_model import MaybePush, Message, Model, Push, Refused, check_push, check_unread, direct_id, now_ms
from stacks import READ_FAN_OUT_THRESHOLD
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

LOG_LIMIT = 5
INBOX_LIMIT = 12
RECALL_WINDOW_S = EDIT_WINDOW_S = 3600
ADMIN_SECRET = "model-admin-" + uuid.uuid4().hex
STACK_EXTRA_ENV = {
    # only users with an account may sign in and be named: each example registers its own
    "IMFLOW_ACCOUNTS": "registered",
    "IMFLOW_ADMIN_SECRET": ADMIN_SECRET,
    # history pages cross from the Redis log into the archive after 5 messages; the archive
    # seals every 0.2 s (tests/stacks.py), so pages cross it while it is being written
    "IMFLOW_CONVERSATION_LOG_LIMIT": str(LOG_LIMIT),
    # inboxes fill up within an example: the oldest entries make room
    "IMFLOW_INBOX_LIMIT": str(INBOX_LIMIT),
    # recalls and edits within the window (the model judges the window by the clock, and
    # tests/test_model_regressions.py runs with short windows for message.too_late)
    "IMFLOW_RECALL_EDIT_RECALL_WINDOW_SECONDS": str(RECALL_WINDOW_S),
    "IMFLOW_RECALL_EDIT_EDIT_WINDOW_SECONDS": str(EDIT_WINDOW_S),
}
TIMEOUT = 10.0  # seconds a reply or an expected push may take on a busy machine
CLOCK_SLACK_MS = 60_000  # a contact change's at_ms / since_ms lies this close to the test's clock
NOTE_MAX = 500  # characters of a contact request's note
MAX_SAFE = (1 << 53) - 1
USERS = 3  # users with devices per example
PHANTOMS = 7  # users who never connect: they fill groups past the read fan-out threshold

settings.register_profile(
    "ci", max_examples=30, stateful_step_count=40, deadline=None, print_blob=True, database=None,
    suppress_health_check=list(HealthCheck),
)
settings.register_profile(
    "long", max_examples=100, stateful_step_count=80, deadline=None, print_blob=True, database=None,
    suppress_health_check=list(HealthCheck),
)


class Device:
    """One connection of a user: replies matched by ref (and ``sent`` by cmid), the rest are pushes."""

    def __init__(self, url: str, token: str, ident: str) -> None:
        self.ident = ident
        self.ws = connect(url, compression=None, max_size=None, proxy=None, open_timeout=TIMEOUT, legacy=True)
        self.ws.send(json.dumps({"op": "auth", "token": token}))
        welcome = json.loads(self.ws.recv(timeout=TIMEOUT))
        assert welcome["op"] == "welcome", welcome
        self.user = welcome["user"]
        self._refs = itertools.count(1)
        self._cond = threading.Condition()
        self._replies: dict[Any, dict[str, Any]] = {}
        self._awaited_cmid: str | None = None
        self._sent: list[dict[str, Any]] = []
        self.pushes: list[dict[str, Any]] = []
        self.closed = False
        self._reader = threading.Thread(target=self._read, name=f"model-{ident}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for data in self.ws:
                frame = json.loads(data)
                with self._cond:
                    if frame.get("ref") is not None:
                        self._replies[frame["ref"]] = frame
                    elif frame.get("op") == "sent" and frame.get("cmid") == self._awaited_cmid:
                        self._sent.append(frame)
                    else:
                        self.pushes.append(frame)
                    self._cond.notify_all()
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def wait(self, check, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: check() or self.closed, TIMEOUT) or not check():
                raise AssertionError(f"{self.ident} ({self.user}): {what} within {TIMEOUT}s; pushes so far {self.pushes}")

    def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        ref = next(self._refs)
        self.ws.send(json.dumps({**frame, "ref": ref}))
        self.wait(lambda: ref in self._replies, f"no reply to {frame}")
        with self._cond:
            reply = self._replies.pop(ref)
        assert reply.pop("ref") == ref
        return reply

    def send(self, frame: dict[str, Any]) -> dict[str, Any]:
        """A send's ``sent`` frame, or its error frame."""
        ref = next(self._refs)
        with self._cond:
            self._awaited_cmid, self._sent = frame["cmid"], []
        self.ws.send(json.dumps({**frame, "op": "send", "ref": ref}))
        self.wait(lambda: self._sent or ref in self._replies, f"no sent or error for {frame}")
        with self._cond:
            self._awaited_cmid = None
            reply = self._sent.pop() if self._sent else self._replies.pop(ref)
        reply.pop("ref", None)
        return reply

    def send_at_once(self, frame: dict[str, Any], times: int) -> list[dict[str, Any]]:
        """The same send ``times`` times without waiting in between (a client's eager retry):
        the replies, ``sent`` frames first."""
        refs = [next(self._refs) for _ in range(times)]
        with self._cond:
            self._awaited_cmid, self._sent = frame["cmid"], []
        for ref in refs:
            self.ws.send(json.dumps({**frame, "op": "send", "ref": ref}))
        self.wait(lambda: len(self._sent) + sum(ref in self._replies for ref in refs) >= times, f"not {times} replies to {frame}")
        with self._cond:
            self._awaited_cmid = None
            replies = self._sent + [self._replies.pop(ref) for ref in refs if ref in self._replies]
        for reply in replies:
            reply.pop("ref", None)
        return replies

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.pushes)

    def close(self) -> None:
        self.ws.close()
        self._reader.join(TIMEOUT)


def expect(call, reply: dict[str, Any], what: str = "") -> Any:
    """The model's answer; if the model refuses, the reply must be that error frame (counted
    in the totals as ``<what> done`` or ``<what> refused <code>`` if ``what`` is given)."""
    try:
        expected = call()
    except Refused as refused:
        assert reply.get("op") == "error" and reply.get("code") in refused.codes, f"expected error {refused}, got {reply}"
        if what:
            ProtocolMachine.totals[f"{what} refused {reply['code']}"] += 1
        return None
    if what:
        ProtocolMachine.totals[f"{what} done"] += 1
    return expected


def same_messages(expected: list[Message], got: list[dict[str, Any]], where: str) -> None:
    assert [m.mid for m in expected] == [m.get("mid") for m in got], (
        f"{where}: expected mids {[(m.mid, m.conversation, m.seq) for m in expected]}, "
        f"got {[(m.get('mid'), m.get('conversation'), m.get('seq')) for m in got]}"
    )
    for message, frame in zip(expected, got, strict=True):
        problem = message.check(frame)
        assert problem is None, f"{where}: {problem}"


picks = st.integers(0, 1 << 16)
texts = st.text(alphabet="abcxyz é☃😀", min_size=1, max_size=12)
dms = st.sampled_from([None, "anyone", "contacts", "contacts"])  # None: not in the frame
presences = st.sampled_from([None, None, "visible", "hidden"])
flags = st.sampled_from([None, None, True, False])  # a conversation setting: None leaves it out


class ProtocolMachine(RuleBasedStateMachine):
    """Random operations of a few users and their devices, each checked against the model."""

    stack: Any = None  # the running stack, set by whoever runs the machine
    totals: Counter[str] = Counter()  # examples, steps, messages and pushes checked (progress reports)

    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:8]
        self.names = [f"u{i}-{tag}" for i in range(USERS)]
        self.phantoms = [f"x{i}-{tag}" for i in range(PHANTOMS)]
        self.ghost = f"ghost-{tag}"  # a user id without an account
        self.model = Model(
            READ_FAN_OUT_THRESHOLD, LOG_LIMIT, INBOX_LIMIT, accounts={*self.names, *self.phantoms},
            recall_window_s=RECALL_WINDOW_S, edit_window_s=EDIT_WINDOW_S,
        )
        self.devices: dict[str, Device] = {}
        self.expected: dict[str, list[Push]] = {}  # device -> pushes the model expects, not compared yet
        self.checked: dict[str, int] = {}  # device -> how many of its pushes were compared
        self.counter = itertools.count()
        # the barrier: a user outside the model with a connection on every gateway, plus one that reads
        self.sentinel = f"s-{tag}"
        secret = {"Authorization": f"Bearer {ADMIN_SECRET}"}
        self.admin = httpx.Client(base_url=self.stack.http(0), headers=secret, timeout=TIMEOUT)
        for user in [*self.names, *self.phantoms, self.sentinel]:
            answer = self.admin.post("/admin/users", json={"user": user})
            assert answer.status_code == 201, f"registering {user}: {answer.status_code} {answer.text}"
        gateways = len(self.stack.ports)
        self.barrier_reader = Device(self.stack.url(0), self.stack.token(self.sentinel), "sentinel")
        self.barrier_listeners = [Device(self.stack.url(g), self.stack.token(self.sentinel), f"sentinel{g}") for g in range(gateways)]
        for name in self.names:
            self._connect(name)

    def teardown(self) -> None:
        totals = ProtocolMachine.totals
        totals["examples"] += 1
        totals["messages"] += len(self.model.by_mid)
        totals["pushes"] += sum(self.checked.values())
        totals["groups"] += len(self.model.groups)
        for device in [*self.devices.values(), self.barrier_reader, *self.barrier_listeners]:
            device.close()
        self.admin.close()

    # -- plumbing

    def _connect(self, name: str) -> str:
        number = next(self.counter)
        ident = f"d{number}"
        device = Device(self.stack.url(number), self.stack.token(name), ident)
        self.devices[ident] = device
        self.model.connect(name, ident)
        self.expected[ident], self.checked[ident] = [], 0
        return ident

    def _device(self, pick: int) -> tuple[str, str, Device]:
        idents = sorted(self.devices, key=lambda ident: int(ident[1:]))
        if not idents:
            self._connect(self.names[pick % USERS])
            idents = list(self.devices)
        ident = idents[pick % len(idents)]
        return self.devices[ident].user, ident, self.devices[ident]

    def _cmid(self, pick: int) -> str:
        # a few cmids are shared by everyone, so the same cmid meets other senders and conversations
        return f"shared-{pick % 3}" if pick % 5 == 0 else f"c{next(self.counter)}"

    def _conversation(self, name: str, pick: int) -> str:
        """One of the user's conversations, a group they may have left, or one they are not in."""
        mine = sorted(c for c in self.model.messages if c.startswith("p:") and self.model.is_member(name, c))
        groups = [f"g:{gid}" for gid in self.model.groups]
        other = [n for n in self.names if n != name]
        strangers = [direct_id(other[pick % len(other)], self.phantoms[0]), f"g:nosuch-{self.names[0]}"]
        choices = mine + groups + strangers
        return choices[pick % len(choices)]

    def _group(self, pick: int) -> str | None:
        gids = list(self.model.groups)  # creation order: gids are random, replays must pick alike
        return gids[pick % len(gids)] if gids else None

    def _everyone(self) -> list[str]:
        return self.names + self.phantoms

    def _listed(self, picks: list[int]) -> list[str]:
        """Users to put into a group: anyone with an account, and one time in 8 the ghost."""
        everyone = self._everyone()
        return [everyone[p % len(everyone)] for p in picks] + ([self.ghost] if picks and picks[0] % 8 == 0 else [])

    def _send(self, name: str, ident: str, device: Device, conversation: str, frame: dict[str, Any]) -> None:
        before = self.model.last_seq(conversation)
        reply = device.send(frame)
        known = reply.get("mid") in self.model.by_mid
        body = frame["body"]
        expected = expect(lambda: self.model.send(
            name, ident, conversation, frame["cmid"], frame.get("type", "text"), body,
            reply.get("mid") if reply.get("op") == "sent" else None,
        ), reply, "send")
        peer = self.model.direct_peer(name, conversation)
        if expected is None and reply.get("code") in ("blocked", "contacts_only") and self.model.user(peer).devices:
            # what was refused is nowhere for the recipient: their history of it now (their sync,
            # unread and pushes are compared after each step)
            self._history_walk(peer, self.devices[self.model.user(peer).devices[0]], conversation, None, 50)
        if expected is not None:
            assert reply == expected, f"send {frame}: expected {expected}, got {reply}"
            if peer is not None and self.model.user(peer).dm == "contacts" and name not in self.model.user(peer).contacts:
                ProtocolMachine.totals["send done to a contacts-only user who wrote first"] += 1
            messages = self.model.messages[conversation]
            if len(messages) > before:  # new: its mid is new and later than the conversation's others
                assert all(m.mid < reply["mid"] for m in messages[:-1]), f"mid {reply['mid']} not after {messages[:-1]}"
                assert not known, f"mid {reply['mid']} was given to another message already"

    # -- connections

    @rule(pick=picks)
    def connect_device(self, pick: int) -> None:
        name = self.names[pick % USERS]
        if len(self.model.user(name).devices) < 3:
            self._connect(name)

    @rule(pick=picks)
    def reconnect(self, pick: int) -> None:
        """Close a connection (after its pushes arrived) and open a new one for the same user."""
        name, ident, device = self._device(pick)
        self.pushes_arrive_as_predicted()
        device.close()
        del self.devices[ident]
        self.model.disconnect(name, ident)
        if pick % 3:  # sometimes the user stays offline for a while
            self._connect(name)

    # -- sending

    @rule(pick=picks, peer=picks, by_to=st.booleans(), text=texts, cmid=picks)
    def send_direct(self, pick: int, peer: int, by_to: bool, text: str, cmid: int) -> None:
        name, ident, device = self._device(pick)
        others = [*self.names, *self.phantoms[:2], self.ghost]
        to = others[peer % len(others)]  # sometimes oneself: notes to self
        conversation = direct_id(name, to)
        target = {"to": to} if by_to else {"conversation": conversation}
        self._send(name, ident, device, conversation, {"cmid": self._cmid(cmid), **target, "body": {"text": text}})

    @precondition(lambda self: self.model.groups)
    @rule(pick=picks, group=picks, text=texts, cmid=picks)
    def send_group(self, pick: int, group: int, text: str, cmid: int) -> None:
        gid = self._group(group)
        if gid is None:
            return
        name, ident, device = self._device(pick)
        self._send(name, ident, device, f"g:{gid}", {"cmid": self._cmid(cmid), "conversation": f"g:{gid}", "body": {"text": text}})

    @rule(pick=picks, conversation=picks, count=st.integers(2, 8))
    def send_burst(self, pick: int, conversation: int, count: int) -> None:
        """Several messages into one conversation: its history reaches past the Redis log."""
        name, ident, device = self._device(pick)
        chosen = self._conversation(name, conversation)
        for _ in range(count):
            self._send(name, ident, device, chosen, {"cmid": f"c{next(self.counter)}", "conversation": chosen, "body": {"text": "burst"}})

    @rule(pick=picks, peer=picks, times=st.integers(2, 3))
    def send_again_before_sent(self, pick: int, peer: int, times: int) -> None:
        """A client that resends before its ``sent`` came: one message, the same answer each time."""
        name, ident, device = self._device(pick)
        to = (self.names + self.phantoms[:1])[peer % (USERS + 1)]
        conversation = direct_id(name, to)
        frame = {"cmid": f"c{next(self.counter)}", "to": to, "body": {"text": "eager"}}
        replies = device.send_at_once(frame, times)
        first = replies[0]
        assert all(r == first for r in replies), f"not the same answer each time: {replies}"
        mid = first.get("mid") if first.get("op") == "sent" else None
        expected = expect(
            lambda: self.model.send(name, ident, conversation, frame["cmid"], "text", frame["body"], mid), first, "send"
        )
        if expected is not None:
            assert first == expected, f"send {frame}: expected {expected}, got {first}"

    @precondition(lambda self: self.model.dedup)
    @rule(pick=picks, which=picks, same_body=st.booleans(), by_to=st.booleans())
    def resend(self, pick: int, which: int, same_body: bool, by_to: bool) -> None:
        """An old cmid again, from any device of its sender, with its body or another."""
        name, ident, device = self._device(pick)
        old = self.model.sent_by(name)
        if not old:
            return
        message = old[which % len(old)]
        conversation = message.conversation
        if by_to and conversation.startswith("p:"):
            low, high = conversation.split(":")[1:]
            target: dict[str, Any] = {"to": high if low == name else low}
        else:
            target = {"conversation": conversation}
        body = {"type": message.type, "body": message.sent_body} if same_body else {"body": {"text": "another body"}}
        self._send(name, ident, device, conversation, {"cmid": message.cmid, **target, **body})

    @rule(pick=picks, peer=picks, body=st.sampled_from([
        {"text": "hi", "pad": "x"}, {"text": ""}, {"text": "x" * 4001}, {}, {"text": 7}, {"text": ["hi"]},
    ]))
    def send_invalid_body(self, pick: int, peer: int, body: dict[str, Any]) -> None:
        """A text body outside its schema is refused and takes no seq (the next message's seq shows it)."""
        name, ident, device = self._device(pick)
        to = self.names[peer % USERS]
        reply = device.send({"cmid": self._cmid(peer), "to": to, "body": body})
        assert reply.get("op") == "error" and reply.get("code") == "bad_frame", f"body {body}: {reply}"

    @rule(pick=picks, peer=picks)
    def send_with_unsorted_id(self, pick: int, peer: int) -> None:
        """``p:bob:alice`` is not the id of alice and bob's conversation (that is ``p:alice:bob``)."""
        name, ident, device = self._device(pick)
        others = [n for n in self.names if n != name]
        low, high = sorted((name, others[peer % len(others)]))
        reply = device.send({"cmid": self._cmid(peer), "conversation": f"p:{high}:{low}", "body": {"text": "x"}})
        assert reply.get("op") == "error" and reply.get("code") == "bad_frame", reply

    # -- read, ack, delete

    @rule(pick=picks, conversation=picks, kind=st.sampled_from(["zero", "one", "last", "past", "max", "some"]), some=picks)
    def read(self, pick: int, conversation: int, kind: str, some: int) -> None:
        name, ident, device = self._device(pick)
        chosen = self._conversation(name, conversation)
        last = self.model.last_seq(chosen)
        seq = {"zero": 0, "one": 1, "last": last, "past": last + 1, "max": MAX_SAFE, "some": some % (last + 1)}[kind]
        reply = device.request({"op": "read", "conversation": chosen, "seq": seq})
        expected = expect(lambda: self.model.read(name, ident, chosen, seq), reply)
        if expected is not None:
            problem = check_unread(expected, reply)
            assert problem is None, f"read {chosen} {seq}: {problem}"
            self.model.read_seen(name, ident, reply)

    @rule(pick=picks, kind=st.sampled_from(["all", "one", "unknown", "mixed"]), which=picks)
    def ack(self, pick: int, kind: str, which: int) -> None:
        name, ident, device = self._device(pick)
        inbox = sorted(self.model.user(name).inbox)
        mids = {"all": inbox, "one": inbox[which % len(inbox):][:1] if inbox else [],
                "unknown": [1 + which], "mixed": inbox[::2] + [2 + which]}[kind] or [3 + which]
        reply = device.request({"op": "ack", "mids": mids})
        expected = self.model.ack(name, mids)
        assert reply == expected, f"ack {mids}: expected {expected}, got {reply}"

    @precondition(lambda self: self.model.by_mid)
    @rule(pick=picks, conversation=picks, which=picks)
    def delete(self, pick: int, conversation: int, which: int) -> None:
        name, ident, device = self._device(pick)
        chosen = self._conversation(name, conversation)
        visible = self.model.visible(name, chosen)
        if not visible:
            return
        mid = visible[which % len(visible)].mid
        reply = device.request({"op": "delete", "conversation": chosen, "mid": mid})
        expected = expect(lambda: self.model.delete(name, chosen, mid), reply)
        if expected is not None:
            assert reply == expected, reply

    # -- recall, edit, receipts

    def _target(self, name: str, pick: int, kind: str) -> tuple[str, int]:
        """A message to recall, edit or ask about, as (conversation, seq): ``fresh`` one the user
        sends now (one-to-one or into a group of theirs; ``fresh_packet`` a red packet), ``own`` one of the user's (``newest``:
        their latest), ``any`` one they may see, ``elsewhere`` any seq of any conversation (one
        they are not in, before they joined, past the last seq)."""
        if kind in ("fresh", "fresh_packet"):
            ident = self.model.user(name).devices[pick % len(self.model.user(name).devices)]
            # as often with another user with devices as in a group (most groups' other members are phantoms)
            groups = [f"g:{gid}" for gid in sorted(self.model.user(name).groups)][:3]
            mine = [direct_id(name, other) for other in self.names] * max(1, len(groups)) + groups
            chosen = mine[pick % len(mine)]
            target = {"to": self.model.direct_peer(name, chosen) or name} if chosen.startswith("p:") else {"conversation": chosen}
            packet = {"type": "red_packet", "body": {"total_cents": 100, "count": 2, "greeting": "gp"}}
            content = packet if kind == "fresh_packet" else {"body": {"text": "fresh"}}
            self._send(name, ident, self.devices[ident], chosen, {"cmid": f"c{next(self.counter)}", **target, **content})
            kind = "newest"
        if kind in ("own", "newest"):
            mine = [m for m in self.model.sent_by(name) if self.model.is_member(name, m.conversation)]
            mine = [m for m in mine if m.seq > self.model.floor(name, m.conversation)]
            mine.sort(key=lambda m: m.mid)
            if mine:
                chosen = mine[-1] if kind == "newest" else mine[pick % len(mine)]
                return chosen.conversation, chosen.seq
        if kind != "elsewhere":
            seen = [m for c in self.model.conversations_of(name) for m in self.model.visible(name, c)]
            if seen:
                chosen = seen[pick % len(seen)]
                return chosen.conversation, chosen.seq
        conversation = self._conversation(name, pick)
        return conversation, 1 + pick % (self.model.last_seq(conversation) + 2)

    def _recall(self, name: str, ident: str, device: Device, conversation: str, seq: int) -> None:
        frame = {"op": "message.recall", "conversation": conversation, "seq": seq}
        before = now_ms()
        reply = device.request(frame)
        asked = (before, now_ms())
        was = self.model.messages[conversation][seq - 1].recalled if 0 < seq <= self.model.last_seq(conversation) else None
        what = "recall again" if was else "recall"
        expected = expect(lambda: self.model.recall(name, ident, conversation, seq, asked, reply), reply, what)
        if expected is not None:
            assert reply == expected, f"{frame} by {ident} ({name}): expected {expected}, got {reply}"
            at = reply["message"]["recalled_at_ms"]
            assert abs(at - asked[1]) < CLOCK_SLACK_MS, f"{frame}: recalled_at_ms {at}"

    def _edit(self, name: str, ident: str, device: Device, conversation: str, seq: int, body: dict[str, Any]) -> None:
        frame = {"op": "message.edit", "conversation": conversation, "seq": seq, "body": body}
        before = now_ms()
        reply = device.request(frame)
        asked = (before, now_ms())
        expected = expect(lambda: self.model.edit(name, ident, conversation, seq, body, asked, reply), reply, "edit")
        if expected is not None:
            assert reply == expected, f"{frame} by {ident} ({name}): expected {expected}, got {reply}"

    @rule(pick=picks, which=picks, kind=st.sampled_from(["fresh", "fresh", "own", "newest", "any", "elsewhere"]),
          again=st.booleans())
    def recall(self, pick: int, which: int, kind: str, again: bool) -> None:
        """A recall (``again``: twice, the second one answered with the same tombstone, changing
        nothing and pushing nothing); by the sender, a group's owner or admin, or someone else."""
        name, ident, device = self._device(pick)
        conversation, seq = self._target(name, which, kind)
        self._recall(name, ident, device, conversation, seq)
        if again:
            self._recall(name, ident, device, conversation, seq)

    @rule(
        pick=picks, which=picks, kind=st.sampled_from(["fresh", "fresh", "fresh_packet", "own", "newest", "any", "elsewhere"]),
        body=st.sampled_from(["new", "new", "same", "twice", "bad"]), text=texts,
    )
    def edit(self, pick: int, which: int, kind: str, body: str, text: str) -> None:
        """An edit: a new body (``twice``: sent again, an idempotent resend), the body it has, or
        a body outside the text schema (``bad_frame``, or the refusal the target earns)."""
        name, ident, device = self._device(pick)
        conversation, seq = self._target(name, which, kind)
        exists = 0 < seq <= self.model.last_seq(conversation)
        current = self.model.messages[conversation][seq - 1].body if exists else {"text": "?"}
        if body == "bad":
            bad = [{"text": ""}, {"text": "x", "pad": 1}, {"text": "x" * 4001}, {}][which % 4]
            reply = device.request({"op": "message.edit", "conversation": conversation, "seq": seq, "body": bad})
            try:
                self.model.edit_check(name, conversation, seq, {"text": "?"}, (now_ms(), now_ms()), reply)
                codes = {"bad_frame"}
            except Refused as refused:
                codes = {"bad_frame", *refused.codes}
            assert reply.get("op") == "error" and reply.get("code") in codes, f"edit to {bad}: expected {codes}, got {reply}"
            return
        new = current if body == "same" and "text" in current else {"text": f"{text} (edited)"}
        self._edit(name, ident, device, conversation, seq, new)
        if body == "twice":
            self._edit(name, ident, device, conversation, seq, new)

    @rule(pick=picks, which=st.lists(picks, min_size=1, max_size=4),
          kind=st.sampled_from(["fresh", "any", "any", "own", "elsewhere"]))
    def receipts(self, pick: int, which: list[int], kind: str) -> None:
        """Receipts of a few messages of one conversation, then who read the first of them."""
        name, ident, device = self._device(pick)
        conversation, seq = self._target(name, which[0], kind)
        last = self.model.last_seq(conversation)
        seen = [m.seq for m in self.model.visible(name, conversation)] or [seq]
        seqs = sorted({seq, *(seen[w % len(seen)] for w in which[1:])})
        frame = {"op": "receipts", "conversation": conversation, "seqs": seqs}
        reply = device.request(frame)
        expected = expect(lambda: self.model.receipts(name, conversation, seqs), reply, "receipts")
        if expected is not None:
            assert reply == expected, f"{frame} by {ident} ({name}), last seq {last}: expected {expected}, got {reply}"
        frame = {"op": "readers", "conversation": conversation, "seq": seq}
        reply = device.request(frame)
        expected = expect(lambda: self.model.readers(name, conversation, seq), reply, "readers")
        if expected is not None:
            assert reply == expected, f"{frame} by {ident} ({name}): expected {expected}, got {reply}"

    # -- paging

    @rule(
        pick=picks, conversation=picks, limit=st.sampled_from([1, 2, 3, 5, 7, 50, 200]), some=picks,
        start=st.sampled_from(["none", "zero", "one", "two", "last", "past", "max", "log_edge", "past_log_edge", "some"]),
    )
    def history(self, pick: int, conversation: int, limit: int, start: str, some: int) -> None:
        """A page from a cursor at or past an edge, then every older page to the end."""
        name, ident, device = self._device(pick)
        chosen = self._conversation(name, conversation)
        last = self.model.last_seq(chosen)
        edge = max(0, last - LOG_LIMIT)  # the newest seq the Redis log no longer holds
        before = {"none": None, "zero": 0, "one": 1, "two": 2, "last": last, "past": last + 1, "max": MAX_SAFE,
                  "log_edge": edge, "past_log_edge": edge + 1, "some": some % (last + 2)}[start]
        self._history_walk(name, device, chosen, before, limit)

    def _history_walk(self, name: str, device: Device, chosen: str, before: int | None, limit: int) -> None:
        last = self.model.last_seq(chosen)
        for _ in range(last + 2):
            frame: dict[str, Any] = {"op": "history", "conversation": chosen, "limit": limit}
            if before is not None:
                frame["before_seq"] = before
            reply = device.request(frame)
            expected = expect(lambda: self.model.history(name, chosen, before, limit), reply)
            if expected is None:
                return
            messages, next_before = expected
            where = f"history {frame} of {name} (last seq {last})"
            assert set(reply) == {"op", "conversation", "messages", "next_before_seq"}, reply
            assert (reply["op"], reply["conversation"]) == ("history", chosen), reply
            same_messages(messages, reply["messages"], where)
            assert reply["next_before_seq"] == next_before, f"{where}: next_before_seq {reply['next_before_seq']}, expected {next_before}"
            if next_before is None:
                return
            before = next_before
        raise AssertionError(f"history of {chosen} never reached its end")

    @rule(pick=picks, limit=st.sampled_from([1, 2, 3, 100]), start=st.sampled_from(["first", "zero", "one", "newest", "past", "max", "inbox"]), some=picks)
    def sync(self, pick: int, limit: int, start: str, some: int) -> None:
        """A sync page from the start or a cursor at an edge, then every older page to the end."""
        name, ident, device = self._device(pick)
        inbox = sorted(self.model.user(name).inbox)
        newest = inbox[-1] if inbox else max(self.model.by_mid, default=1)
        before = {"first": None, "zero": 0, "one": 1, "newest": newest, "past": newest + 1, "max": MAX_SAFE,
                  "inbox": inbox[some % len(inbox)] if inbox else newest}[start]
        self._sync_walk(name, device, before, limit)

    def _sync_walk(self, name: str, device: Device, before: int | None, limit: int) -> None:
        for _ in range(len(self.model.user(name).inbox) + 2):
            frame: dict[str, Any] = {"op": "sync", "limit": limit}
            if before is not None:
                frame["before_mid"] = before
            reply = device.request(frame)
            expected = self.model.sync(name, before, limit)
            where = f"sync {frame} of {name}"
            assert set(reply) == {"op", *expected}, f"{where}: fields {sorted(reply)}"
            same_messages(expected.pop("messages"), reply.pop("messages"), where)
            assert reply == {"op": "sync", **expected}, f"{where}: expected {expected}, got {reply}"
            if expected["next_before_mid"] is None:
                return
            before = expected["next_before_mid"]
        raise AssertionError(f"sync of {name} never reached its end")

    # -- groups

    @rule(pick=picks, members=st.lists(picks, max_size=8), name=texts)
    def create_group(self, pick: int, members: list[int], name: str) -> None:
        user, ident, device = self._device(pick)
        listed = self._listed(members)
        reply = device.request({"op": "create_group", "name": name, "members": listed})
        expected = expect(lambda: self.model.create_group(user, reply.get("gid"), name, listed), reply, "create_group")
        if expected is not None:
            assert reply == expected, f"create_group {listed} by {user}: expected {expected}, got {reply}"

    @precondition(lambda self: self.model.groups)
    @rule(pick=picks, group=picks, users=st.lists(picks, min_size=1, max_size=8))
    def add_members(self, pick: int, group: int, users: list[int]) -> None:
        gid = self._group(group)
        if gid is None:
            return
        name, ident, device = self._device(pick)
        listed = self._listed(users)
        reply = device.request({"op": "add_members", "gid": gid, "users": listed})
        expected = expect(lambda: self.model.add_members(name, gid, listed), reply, "add_members")
        if expected is not None:
            assert reply == expected, reply

    def _member_or_stranger(self, gid: str, pick: int) -> str:
        """A member of the group, or (one time in members + 1) a user who was never in it."""
        members = sorted(self.model.groups[gid].roles) + [self.phantoms[-1]]
        return members[pick % len(members)]

    @precondition(lambda self: self.model.groups)
    @rule(pick=picks, group=picks, user=picks)
    def remove_member(self, pick: int, group: int, user: int) -> None:
        gid = self._group(group)
        if gid is None:
            return
        name, ident, device = self._device(pick)
        target = self._member_or_stranger(gid, user)
        reply = device.request({"op": "remove_member", "gid": gid, "user": target})
        expected = expect(lambda: self.model.remove_member(name, gid, target), reply)
        if expected is not None:
            assert reply == expected, reply

    @precondition(lambda self: self.model.groups)
    @rule(pick=picks, group=picks)
    def leave_group(self, pick: int, group: int) -> None:
        gid = self._group(group)
        if gid is None:
            return
        name, ident, device = self._device(pick)
        reply = device.request({"op": "leave_group", "gid": gid})
        expected = expect(lambda: self.model.leave_group(name, gid), reply)
        if expected is not None:
            assert reply == expected, reply

    @precondition(lambda self: self.model.groups)
    @rule(pick=picks, group=picks, user=picks, role=st.sampled_from(["owner", "admin", "member"]))
    def set_role(self, pick: int, group: int, user: int, role: str) -> None:
        gid = self._group(group)
        if gid is None:
            return
        name, ident, device = self._device(pick)
        target = self._member_or_stranger(gid, user)
        reply = device.request({"op": "set_role", "gid": gid, "user": target, "role": role})
        expected = expect(lambda: self.model.set_role(name, gid, target, role), reply)
        if expected is not None:
            assert reply == expected, reply

    @precondition(lambda self: self.model.groups)
    @rule(pick=picks, group=picks, up=st.booleans())
    def cross_the_read_fan_out_threshold(self, pick: int, group: int, up: bool) -> None:
        """The owner (or an admin) grows a group past the threshold or shrinks it below."""
        gid = self._group(group)
        if gid is None:
            return
        roles = self.model.groups[gid].roles
        actors = [d for d in sorted(self.devices) if roles.get(self.devices[d].user) in ("owner", "admin")]
        if not actors:
            return
        device = self.devices[actors[pick % len(actors)]]
        name = device.user
        if up:
            missing = [p for p in self.phantoms if p not in roles][: max(0, READ_FAN_OUT_THRESHOLD - len(roles))]
            if missing:
                reply = device.request({"op": "add_members", "gid": gid, "users": missing})
                expected = expect(lambda: self.model.add_members(name, gid, missing), reply, "add_members")
                if expected is not None:
                    assert reply == expected, reply
            return
        for phantom in [p for p in self.phantoms if p in roles][: max(0, len(roles) - READ_FAN_OUT_THRESHOLD + 1)]:
            reply = device.request({"op": "remove_member", "gid": gid, "user": phantom})
            expected = expect(lambda: self.model.remove_member(name, gid, phantom), reply)
            if expected is not None:
                assert reply == expected, reply

    @rule(pick=picks, group=picks)
    def look_at_groups(self, pick: int, group: int) -> None:
        name, ident, device = self._device(pick)
        reply = device.request({"op": "my_groups"})
        assert reply == self.model.my_groups(name), reply
        gid = self._group(group)
        if gid is not None:
            reply = device.request({"op": "group_members", "gid": gid})
            expected = expect(lambda: self.model.group_members(name, gid), reply)
            if expected is not None:
                assert reply == expected, reply

    # -- contacts, blocks, privacy

    def _peer(self, name: str, pick: int, likely: Sequence[str] = ()) -> str:
        """Whom a contact operation names: most often a user of ``likely`` (where it can
        succeed) or another user with devices; sometimes a phantom (who never answers) or
        oneself (``bad_frame``), or the ghost (``not_found``)."""
        others = [n for n in self.names if n != name]
        choices = [*likely * 4, *others * 2, self.phantoms[0], self.ghost, name]
        return choices[pick % len(choices)]

    def _contact_change(self, device: Device, frame: dict[str, Any], call) -> None:
        """Send ``frame`` and compare its reply with ``call(when)``, the model's answer given
        the time the reply carries (``at_ms`` / ``since_ms``, None on an error)."""
        reply = device.request(frame)
        when = None if reply.get("op") == "error" else reply.get("at_ms", reply.get("since_ms"))
        where = f"{frame} by {device.ident} ({device.user})"
        if when is not None:
            assert isinstance(when, int) and abs(when - time.time() * 1000) < CLOCK_SLACK_MS, f"{where}: the time in {reply}"
        try:
            expected = expect(lambda: call(when), reply, frame["op"])
        except AssertionError as failure:
            failure.add_note(f"{where}: got {reply}")
            raise
        if expected is not None:
            assert reply == expected, f"{where}: expected {expected}, got {reply}"
            ProtocolMachine.totals[f"contact {reply.get('event')}"] += 1

    @rule(pick=picks, peer=picks, note=st.sampled_from([None, "", "hi ☃😀", "n" * NOTE_MAX, "n" * (NOTE_MAX + 1)]))
    def contact_request(self, pick: int, peer: int, note: str | None) -> None:
        """A request (most often to someone neither a contact nor asked already), or an
        acceptance if the peer asked first."""
        name, ident, device = self._device(pick)
        me = self.model.user(name)
        strangers = [n for n in [*self.names, self.phantoms[0]] if n != name and n not in me.contacts and n not in me.requests_out]
        to = self._peer(name, peer, self.model.incoming(name) + strangers)
        frame = {"op": "contact_request", "user": to, **({} if note is None else {"note": note})}
        if note is not None and len(note) > NOTE_MAX:
            reply = device.request(frame)
            assert reply.get("op") == "error" and reply.get("code") == "bad_frame", f"{frame}: {reply}"
            return
        self._contact_change(device, frame, lambda when: self.model.contact_request(name, ident, to, note or "", when))

    @rule(pick=picks, peer=picks, answer=picks)
    def befriend(self, pick: int, peer: int, answer: int) -> None:
        """A request to another user with devices, answered at once: mostly accepted on one of
        theirs (so that contacts, and what they allow, are common within an example), else
        declined there or cancelled by the asker."""
        name, ident, device = self._device(pick)
        others = [n for n in self.names if n != name and self.model.user(n).devices]
        if not others:
            return
        to = others[peer % len(others)]
        frame = {"op": "contact_request", "user": to}
        self._contact_change(device, frame, lambda when: self.model.contact_request(name, ident, to, "", when))
        if name not in self.model.incoming(to):
            return
        theirs = self.model.user(to).devices
        other = theirs[answer % len(theirs)]
        if answer % 5 == 0:
            frame = {"op": "contact_decline", "user": name}
            self._contact_change(self.devices[other], frame, lambda when: self.model.contact_decline(to, other, name))
        elif answer % 5 == 1:
            frame = {"op": "contact_cancel", "user": to}
            self._contact_change(device, frame, lambda when: self.model.contact_cancel(name, ident, to))
        else:
            frame = {"op": "contact_accept", "user": name}
            self._contact_change(self.devices[other], frame, lambda when: self.model.contact_accept(to, other, name, when))

    @rule(pick=picks, peer=picks)
    def contact_accept(self, pick: int, peer: int) -> None:
        name, ident, device = self._device(pick)
        to = self._peer(name, peer, self.model.incoming(name))
        frame = {"op": "contact_accept", "user": to}
        self._contact_change(device, frame, lambda when: self.model.contact_accept(name, ident, to, when))

    @rule(pick=picks, peer=picks, cancel=st.booleans())
    def contact_decline_or_cancel(self, pick: int, peer: int, cancel: bool) -> None:
        """Decline a request to the user, or cancel one of theirs (mostly a pending one)."""
        name, ident, device = self._device(pick)
        likely = sorted(self.model.user(name).requests_out) if cancel else self.model.incoming(name)
        to = self._peer(name, peer, likely)
        if cancel:
            frame = {"op": "contact_cancel", "user": to}
            self._contact_change(device, frame, lambda when: self.model.contact_cancel(name, ident, to))
        else:
            frame = {"op": "contact_decline", "user": to}
            self._contact_change(device, frame, lambda when: self.model.contact_decline(name, ident, to))

    @rule(pick=picks, peer=picks)
    def contact_remove(self, pick: int, peer: int) -> None:
        name, ident, device = self._device(pick)
        to = self._peer(name, peer, sorted(self.model.user(name).contacts))
        frame = {"op": "contact_remove", "user": to}
        self._contact_change(device, frame, lambda when: self.model.contact_remove(name, ident, to))

    @rule(pick=picks, peer=picks)
    def block(self, pick: int, peer: int) -> None:
        name, ident, device = self._device(pick)
        to = self._peer(name, peer)
        self._contact_change(device, {"op": "block", "user": to}, lambda when: self.model.block(name, ident, to, when))

    @rule(pick=picks, peer=picks)
    def unblock(self, pick: int, peer: int) -> None:
        name, ident, device = self._device(pick)
        to = self._peer(name, peer, sorted(self.model.user(name).blocked))
        self._contact_change(device, {"op": "unblock", "user": to}, lambda when: self.model.unblock(name, ident, to))

    @rule(pick=picks, dm=dms, presence=presences)
    def set_privacy(self, pick: int, dm: str | None, presence: str | None) -> None:
        self._privacy(*self._device(pick), dm, presence)

    @rule(pick=picks, peer=picks, first=st.booleans())
    def write_to_a_contacts_only_user(self, pick: int, peer: int, first: bool) -> None:
        """A user takes one-to-one messages from contacts only, writes first (or not) to another
        user with devices, who then writes to them: passes if they wrote first (or are contacts)."""
        name, ident, device = self._device(pick)
        others = [n for n in self.names if n != name and self.model.user(n).devices]
        if not others:
            return
        to = others[peer % len(others)]
        self._privacy(name, ident, device, "contacts", None)
        if first:
            self._send(name, ident, device, direct_id(name, to), {"cmid": f"c{next(self.counter)}", "to": to, "body": {"text": "first"}})
        theirs = self.model.user(to).devices[peer % len(self.model.user(to).devices)]
        frame = {"cmid": f"c{next(self.counter)}", "to": name, "body": {"text": "answer"}}
        self._send(to, theirs, self.devices[theirs], direct_id(name, to), frame)

    def _privacy(self, name: str, ident: str, device: Device, dm: str | None, presence: str | None) -> None:
        given = {"dm": dm, "presence": presence}
        frame = {"op": "set_privacy", **{key: value for key, value in given.items() if value is not None}}
        reply = device.request(frame)
        if dm is None and presence is None:
            assert reply.get("op") == "error" and reply.get("code") == "bad_frame", reply
            return
        expected = self.model.set_privacy(name, ident, dm, presence)
        assert reply == expected, f"{frame} by {ident} ({name}): expected {expected}, got {reply}"

    @rule(pick=picks)
    def look_at_contacts(self, pick: int) -> None:
        """The lists, by user id (the protocol gives no order), the profile fields aside."""
        name, ident, device = self._device(pick)
        expected = self.model.contact_lists(name)
        where = f"lists of {name}"
        contacts = device.request({"op": "contacts"})
        assert set(contacts) == {"op", "contacts"} and contacts["op"] == "contacts", f"{where}: {contacts}"
        for entry in contacts["contacts"]:
            assert set(entry) == {"user", "since_ms", "display_name", "avatar_url", "status"}, f"{where}: {entry}"
            assert entry["status"] == "active", f"{where}: {entry}"
        requests = device.request({"op": "contact_requests"})
        assert set(requests) == {"op", "incoming", "outgoing"} and requests["op"] == "contact_requests", f"{where}: {requests}"
        for entry in requests["incoming"]:
            assert set(entry) == {"user", "note", "at_ms", "display_name", "avatar_url"}, f"{where}: {entry}"
        blocked = device.request({"op": "blocked"})
        assert set(blocked) == {"op", "users"} and blocked["op"] == "blocked", f"{where}: {blocked}"
        got = {
            "contacts": [{"user": c["user"], "since_ms": c["since_ms"]} for c in contacts["contacts"]],
            "incoming": [{"user": r["user"], "note": r["note"], "at_ms": r["at_ms"]} for r in requests["incoming"]],
            "outgoing": requests["outgoing"],
            "blocked": blocked["users"],
        }
        got = {kind: sorted(entries, key=lambda entry: entry["user"]) for kind, entries in got.items()}
        assert got == expected, f"{where}: expected {expected}, got {got}"

    @rule(pick=picks, users=st.lists(picks, min_size=1, max_size=6, unique=True))
    def look_at_profiles(self, pick: int, users: list[int]) -> None:
        """Who has an account and whether it is active (the profile's other fields as the admin
        left them: the model does not follow them); one's own entry has one's privacy."""
        name, ident, device = self._device(pick)
        known = [*self.names, *self.phantoms[:3], self.ghost]
        asked = sorted({known[u % len(known)] for u in users})
        reply = device.request({"op": "profiles", "users": asked})
        where = f"profiles {asked} of {name}"
        assert set(reply) == {"op", "profiles", "unknown"} and reply["op"] == "profiles", f"{where}: {reply}"
        mine = {"dm": self.model.user(name).dm, "presence": self.model.user(name).presence}
        expected = [
            {"user": user, "status": "deactivated" if user in self.model.deactivated else "active", **(mine if user == name else {})}
            for user in asked if self.model.account_refusal(user) != "not_found"
        ]
        fields = {"user", "status", "display_name", "avatar_url", "custom"}
        got = []
        for entry in sorted(reply["profiles"], key=lambda entry: entry["user"]):
            own = {"dm", "presence"} if entry.get("user") == name else set()
            assert set(entry) == fields | own, f"{where}: {entry}"
            got.append({key: entry[key] for key in ("user", "status", *sorted(own))})
        assert got == expected, f"{where}: expected {expected}, got {got}"
        assert sorted(reply["unknown"]) == [user for user in asked if self.model.account_refusal(user) == "not_found"], f"{where}: {reply}"

    @rule(which=picks, again=st.booleans())
    def deactivate_or_reactivate(self, which: int, again: bool) -> None:
        """The admin deactivates one of the phantoms named most (they have no session to end),
        or reactivates it; ``again`` repeats the last change instead (``conflict``, 409)."""
        phantom = self.phantoms[which % 3]
        off = phantom in self.model.deactivated
        change, done_already = ("reactivate", "deactivate") if off else ("deactivate", "reactivate")
        action = done_already if again else change
        answer = self.admin.post(f"/admin/users/{phantom}/{action}")
        if again:
            assert (answer.status_code, answer.json()["error"]["code"]) == (409, "conflict"), f"{action} {phantom}: {answer.text}"
            return
        assert answer.status_code == 200, f"{action} {phantom}: {answer.status_code} {answer.text}"
        assert answer.json()["status"] == ("active" if off else "deactivated"), answer.text
        self.model.deactivated.symmetric_difference_update({phantom})
        ProtocolMachine.totals[action] += 1

    # -- conversation settings

    @rule(pick=picks, conversation=picks, pinned=flags, muted=flags, hidden=flags, marked_unread=flags)
    def set_conversation(self, pick: int, conversation: int, **flags: bool | None) -> None:
        name, ident, device = self._device(pick)
        mine = self.model.conversations_of(name)
        # mostly one of the user's conversations, else any (a group they are not in: not_found)
        chosen = mine[conversation % len(mine)] if mine and conversation % 4 else self._conversation(name, conversation)
        changes = {key: value for key, value in flags.items() if value is not None}
        frame = {"op": "set_conversation", "conversation": chosen, **changes}
        reply = device.request(frame)
        if not changes:
            assert reply.get("op") == "error" and reply.get("code") == "bad_frame", f"{frame}: {reply}"
            return
        expected = expect(lambda: self.model.set_conversation(name, ident, chosen, changes), reply, "set_conversation")
        if expected is not None:
            assert reply == expected, f"{frame} by {ident} ({name}): expected {expected}, got {reply}"

    # -- what a user sees, after every step

    @invariant()
    def a_user_sees_what_the_model_says(self) -> None:
        """One user a step, in turn: every sync page, and one conversation's history in small
        pages, from the top and from the edges (0, the Redis log's edge)."""
        step = ProtocolMachine.totals["checkpoints"]
        ProtocolMachine.totals["checkpoints"] += 1
        online = sorted(self.devices, key=lambda ident: int(ident[1:]))
        if not online:
            return
        device = self.devices[online[step % len(online)]]
        name = device.user
        self._sync_walk(name, device, None, 1 + step % 3)
        chosen = self._conversation(name, step // len(online))
        last = self.model.last_seq(chosen)
        for before in (None, 0, max(0, last - LOG_LIMIT) + 1 - step % 2):
            self._history_walk(name, device, chosen, before, 1 + step % 4)

    # -- pushes

    @invariant()
    def pushes_arrive_as_predicted(self) -> None:
        """Every device has exactly the pushes the model expects by now, in order."""
        ProtocolMachine.totals["steps"] += 1
        for ident, pushes in self.model.take_pushes().items():
            self.expected[ident].extend(pushes)
        self._barrier()
        for ident, device in self.devices.items():
            wanted, at = self.expected[ident], self.checked[ident]  # the pushes not seen yet; how many were
            needed = at + sum(not isinstance(push, MaybePush) for push in wanted)
            if len(device.snapshot()) < needed:
                device.wait(lambda device=device, needed=needed: len(device.pushes) >= needed, f"expected {needed} pushes, of {wanted}")
            got = device.snapshot()
            for push in wanted:
                if isinstance(push, MaybePush) and (at == len(got) or check_push(push, got[at]) is not None):
                    ProtocolMachine.totals["push that may come: did not"] += 1
                    continue  # it did not come (the barrier has let everything published arrive)
                assert at < len(got), f"{ident} ({device.user}) push #{at} missing: {push}"
                problem = check_push(push, got[at])
                assert problem is None, f"{ident} ({device.user}) push #{at}: {problem}"
                ProtocolMachine.totals[f"push {got[at].get('op')}{' that may come: came' if isinstance(push, MaybePush) else ''}"] += 1
                at += 1
            assert len(got) == at, f"{ident} ({device.user}): pushes nobody expects: {got[at:]}"
            self.checked[ident] = at
            wanted.clear()


    def _barrier(self) -> None:
        """Return once every push published so far has reached its device.

        Each gateway routes what it gets on its Redis channel in publish order. The sentinel's
        read publishes an ``unread`` push to every gateway after everything this step made the
        server publish; once each gateway has routed it, the pushes before it sit in their
        connections' queues, and a ping on each connection returns after them.
        """
        seen = [len(listener.snapshot()) for listener in self.barrier_listeners]
        self.barrier_reader.request({"op": "read", "conversation": direct_id(self.sentinel, self.sentinel), "seq": 0})
        for listener, before in zip(self.barrier_listeners, seen, strict=True):
            listener.wait(lambda: len(listener.pushes) > before, "the barrier's unread push did not come")
        for device in self.devices.values():
            assert device.request({"op": "ping"}) == {"op": "pong"}


def run_model(stack: Any, profile: str = "ci", seed_value: int | None = None) -> int:
    """Run the state machine against a running stack with one seed (random unless given);
    returns the seed. A failure carries the seed in a note, and hypothesis prints the shrunk steps."""
    seed_value = random.SystemRandom().getrandbits(32) if seed_value is None else seed_value
    machine_test = get_state_machine_test(ProtocolMachine, settings=settings.get_profile(profile))
    print(f"protocol model seed {seed_value} on the {stack.kind} stack", flush=True)  # shown even if a timeout ends it
    ProtocolMachine.stack = stack
    try:
        seed(seed_value)(machine_test)()
    except BaseException as failure:
        failure.add_note(f"protocol model seed {seed_value}: IMFLOW_MODEL_SEED={seed_value} runs it again")
        raise
    finally:
        ProtocolMachine.stack = None
    return seed_value


@pytest.mark.timeout(900)  # passing takes well under a minute; shrinking a failure may take minutes
def test_the_server_behaves_as_the_model_says(stack) -> None:
    chosen = os.environ.get("IMFLOW_MODEL_SEED")
    run_model(stack, os.environ.get("IMFLOW_MODEL_PROFILE", "ci"), int(chosen) if chosen else None)
    stack.assert_alive()
