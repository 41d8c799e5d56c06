"""A reference model of imflow's conversation semantics (docs/protocol.md), in memory, no I/O.

tests/test_model.py drives random operations over the real WebSocket protocol and asks this
model, step by step, what every reply and every push must be. The model knows what the server
assigns only after the server said it: a message's ``mid`` comes from the ``sent`` reply, its
``sent_at_ms`` from the first frame that carries it, a group's ``gid`` from the ``group`` reply.
Everything else it predicts. Likewise a contact change's time (``at_ms``, ``since_ms``) comes
from its reply, and every later frame must carry that same time.

Where the protocol lets the server vary, the model says by how much:

- read fan-out counts catch up within the flush: a member's server-side ``last`` seq of such a
  group lies between what the model knows was flushed to them (``User.last_known``) and the
  group's last seq, so an ``unread.total`` in a push is a range (``Total``). A sync's first
  page and a ``read`` bring the counts up to date first, so those are exact;
- pushes are best effort, but on a test machine they arrive: the model expects each one;
- a recall drops the count of each member who had not read the message (docs/protocol.md,
  "Recall and edit"): at once where the server's last seq for them had reached it, so a read
  fan-out member's count and their ``unread`` push are ranges, and the push itself may or may not
  come (``MaybePush``), as their flush had counted the message or not;
- the recall and edit windows are judged by the clock around the request (``Model._late``):
  where the window ended while the server was answering, either answer is right.

Recall and edit rewrite a ``Message`` in place, so history, sync and inbox pages show the latest
version or the tombstone with nothing more to do; a ``msg`` push shows the message as it was
when pushed (``MsgPush.shown``). Receipts (``receipts``, ``readers``, the one-to-one ``receipt``
push and sync's ``peer_read_seq``) come from the members' read seqs the model keeps anyway.

Model of a device: a connection id given by the test; pushes are listed per device.

The social graph (contacts, requests, blocks, the ``dm`` privacy setting, ``wrote_to``) follows
the rules of docs/protocol.md ("Accounts, contacts, blocking and presence"), written here anew
from them: nothing of imflow's is imported. Where those rules are silent the model's choice
is said at the method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

OWNER, ADMIN, MEMBER = "owner", "admin", "member"
ROLES = (OWNER, ADMIN, MEMBER)


class Refused(Exception):
    """The server must answer with an ``error`` frame of one of these codes (several where the
    protocol does not say which of two reasons comes first)."""

    def __init__(self, *codes: str) -> None:
        super().__init__(" or ".join(codes))
        self.codes = codes


def now_ms() -> int:
    """The test's clock (the server runs on the same machine: the same clock)."""
    return int(time.time() * 1000)


def direct_id(a: str, b: str) -> str:
    low, high = sorted((a, b))
    return f"p:{low}:{high}"


@dataclass
class Message:
    mid: int
    seq: int
    conversation: str
    sender: str
    cmid: str
    type: str
    body: dict[str, Any]
    mode: str  # 'write' (in the inboxes) or 'read' (stored once)
    sent_at_ms: int | None = None  # learned from the first frame that shows it
    seen_ms: int = 0  # the test's clock when the model stored it: sent_at_ms lies near it
    # what a change makes of it (docs/protocol.md, "Recall and edit"): the fields are absent
    # from the frame while unset, so an untouched message reads exactly as before
    version: int = 1
    sent_body: dict[str, Any] = field(default_factory=dict)  # the body as sent (a resend's)
    edited_at_ms: int | None = None
    recalled_at_ms: int | None = None
    recalled_by: str | None = None

    def check(self, frame: dict[str, Any], shown: dict[str, Any] | None = None) -> str | None:
        """None if ``frame`` is this message as the protocol shows it (as it was when ``shown``,
        a ``state()``, was taken; else as it is now); else what differs."""
        self.learn(frame)
        expected = self.frame(shown)
        return None if frame == expected else f"message differs:\n  expected {expected}\n  got      {frame}"

    def learn(self, frame: dict[str, Any]) -> None:
        if self.sent_at_ms is None and isinstance(frame.get("sent_at_ms"), int):
            self.sent_at_ms = frame["sent_at_ms"]

    def state(self) -> dict[str, Any]:
        """What an edit or a recall changes, as it is now (a push shows the message as it was)."""
        return {
            "body": self.body, "version": self.version, "edited_at_ms": self.edited_at_ms,
            "recalled_at_ms": self.recalled_at_ms, "recalled_by": self.recalled_by,
        }

    def frame(self, shown: dict[str, Any] | None = None) -> dict[str, Any]:
        state = shown or self.state()
        frame = {
            "mid": self.mid, "seq": self.seq, "conversation": self.conversation, "sender": self.sender,
            "client_msg_id": self.cmid, "type": self.type, "body": state["body"], "sent_at_ms": self.sent_at_ms,
        }
        if state["version"] > 1:
            frame["version"] = state["version"]
        for key in ("edited_at_ms", "recalled_at_ms", "recalled_by"):
            if state[key] is not None:
                frame[key] = state[key]
        return frame

    @property
    def recalled(self) -> bool:
        return self.recalled_at_ms is not None


@dataclass(frozen=True)
class Total:
    """An unread total that may lag read fan-out flushes: ``low <= total <= high``."""

    low: int
    high: int

    def holds(self, value: object) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high


@dataclass(frozen=True)
class MsgPush:
    message: Message
    unread: dict[str, Any] | None  # {conversation, count, total: Total}; None for read fan-out
    shown: dict[str, Any] = field(default_factory=dict)  # the message's state() when pushed


@dataclass(frozen=True)
class UnreadPush:
    """The same frame the reading connection got as its reply (fixed once that reply is seen)."""

    reply: dict[str, Any]


@dataclass(frozen=True)
class RangedUnreadPush:
    """An ``unread`` push whose count and total the model knows as ranges (a recall's)."""

    frame: dict[str, Any]  # count and total may be Totals


@dataclass(frozen=True)
class MaybePush:
    """A push that comes or not, as the server's hidden state has it (a read fan-out member's
    count drops at a recall only if their flush had counted the message already)."""

    push: Any


@dataclass(frozen=True)
class FramePush:
    """A push the model knows exactly: a contact change, a privacy change, a conversation's
    settings change (a request that changes nothing is pushed to no one)."""

    frame: dict[str, Any]


Push = MsgPush | UnreadPush | RangedUnreadPush | FramePush | MaybePush


def check_push(expected: Push, frame: dict[str, Any]) -> str | None:
    """None if ``frame`` is the push ``expected``; else what differs."""
    if isinstance(expected, MaybePush):
        return check_push(expected.push, frame)
    if isinstance(expected, RangedUnreadPush):
        return check_unread(expected.frame, frame)
    if isinstance(expected, FramePush):
        return None if frame == expected.frame else f"expected the push {expected.frame}, got {frame}"
    if isinstance(expected, UnreadPush):
        wanted = {k: v for k, v in expected.reply.items() if k != "ref"}
        return None if frame == wanted else f"unread push: expected {wanted}, got {frame}"
    if frame.get("op") != "msg" or set(frame) != ({"op", "message", "unread"} if expected.unread else {"op", "message"}):
        return f"expected a msg push {'with' if expected.unread else 'without'} unread, got {frame}"
    problem = expected.message.check(frame["message"], expected.shown or None)
    if problem or expected.unread is None:
        return problem
    return check_unread(expected.unread, frame["unread"])


def check_unread(expected: dict[str, Any], got: dict[str, Any]) -> str | None:
    """``total`` (and ``count``, after a recall in a read fan-out group) may be a Total."""
    ranged = {k for k, v in expected.items() if isinstance(v, Total) or k == "total"}
    exact = {k: v for k, v in expected.items() if k not in ranged}
    rest = {k: v for k, v in got.items() if k not in ranged}
    holds = all(
        expected[k].holds(got.get(k)) if isinstance(expected[k], Total) else got.get(k) == expected[k] for k in ranged
    )
    if rest != exact or not holds:
        return f"unread: expected {exact} with {({k: expected[k] for k in ranged})}, got {got}"
    return None


@dataclass
class Group:
    gid: str
    name: str
    roles: dict[str, str]
    joined: dict[str, int]  # member -> the conversation's seq when they joined

    @property
    def conversation(self) -> str:
        return f"g:{self.gid}"


@dataclass
class User:
    name: str
    devices: list[str] = field(default_factory=list)
    inbox: dict[int, Message] = field(default_factory=dict)  # mid -> message, write fan-out only
    read: dict[str, int] = field(default_factory=dict)  # conversation -> read seq
    last_known: dict[str, int] = field(default_factory=dict)  # conversation -> lowest last seq the server may hold
    deleted: set[int] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    contacts: dict[str, int] = field(default_factory=dict)  # peer -> since_ms
    requests_out: dict[str, dict[str, Any]] = field(default_factory=dict)  # peer -> {note, at_ms}
    blocked: dict[str, int] = field(default_factory=dict)  # peer -> at_ms (whom this user blocks)
    dm: str = "anyone"  # who may start a one-to-one conversation: anyone | contacts
    presence: str = "visible"
    wrote_to: set[str] = field(default_factory=set)  # non-contacts this contacts-only user wrote to
    # conversation -> {pinned, muted, marked_unread: bool, hidden_seq: int | None}, as set
    conversation_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # conversation -> seqs recalled while above the user's read seq: they count as read
    recalled: dict[str, set[int]] = field(default_factory=dict)


class Model:
    """The protocol's state: users, conversations, groups. Methods mirror the operations; each
    returns the expected reply (or raises Refused) and records the expected pushes in
    ``self.pushes`` (device -> list), which the caller collects with ``take_pushes``."""

    def __init__(
        self, read_fan_out_threshold: int, log_limit: int, inbox_limit: int = 1000, accounts: set[str] | None = None,
        recall_window_s: float = 120, edit_window_s: float = 900,
    ) -> None:
        """``accounts``: the users with an account (``IMFLOW_ACCOUNTS=registered``); None for
        ``open``, where every user id counts as an active account. The windows are the
        recall_edit plugin's settings (``IMFLOW_RECALL_EDIT_*_WINDOW_SECONDS``)."""
        self.accounts = accounts
        self.recall_window_ms = int(recall_window_s * 1000)
        self.edit_window_ms = int(edit_window_s * 1000)
        self.deactivated: set[str] = set()  # accounts the admin deactivated
        self.threshold = read_fan_out_threshold
        self.log_limit = log_limit
        self.inbox_limit = inbox_limit
        self.users: dict[str, User] = {}
        self.messages: dict[str, list[Message]] = {}  # conversation -> messages by seq (index seq - 1)
        self.groups: dict[str, Group] = {}
        self.read_mark: dict[str, int] = {}  # gid -> newest read fan-out seq
        self.dedup: dict[tuple[str, str, str], Message] = {}  # (conversation, sender, cmid)
        self.by_mid: dict[int, Message] = {}
        self.pushes: dict[str, list[Push]] = {}

    # -- users and devices

    def user(self, name: str) -> User:
        if name not in self.users:
            self.users[name] = User(name)
        return self.users[name]

    def connect(self, name: str, device: str) -> None:
        self.user(name).devices.append(device)

    def disconnect(self, name: str, device: str) -> None:
        self.user(name).devices.remove(device)

    def _push(self, user: User, push: Push, skip: str = "") -> None:
        for device in user.devices:
            if device != skip:
                self.pushes.setdefault(device, []).append(push)

    def take_pushes(self) -> dict[str, list[Push]]:
        out, self.pushes = self.pushes, {}
        return out

    # -- conversations

    def last_seq(self, conversation: str) -> int:
        return len(self.messages.get(conversation, []))

    def is_member(self, name: str, conversation: str) -> bool:
        if conversation.startswith("p:"):
            return name in conversation.split(":")[1:]
        group = self.groups.get(conversation[2:])
        return group is not None and name in group.roles

    def members(self, conversation: str) -> list[str]:
        if conversation.startswith("p:"):
            return sorted(set(conversation.split(":")[1:]))
        return sorted(self.groups[conversation[2:]].roles)

    def floor(self, name: str, conversation: str) -> int:
        """A member sees the messages after this seq (their joining point)."""
        if conversation.startswith("g:"):
            return self.groups[conversation[2:]].joined[name]
        return 0

    def _unread(self, user: User, conversation: str) -> int:
        return self._count(user, conversation, self.last_seq(conversation))

    def _count(self, user: User, conversation: str, last: int) -> int:
        """The count for a last seq of ``last``: the seqs above the read seq up to it, less the
        recalled ones among them (docs/protocol.md, "Unread counts")."""
        read = user.read.get(conversation, 0)
        recalled = sum(1 for seq in user.recalled.get(conversation, ()) if read < seq <= last)
        return max(0, last - read - recalled)

    def total(self, user: User) -> Total:
        """The user's unread total as the server may hold it now (lagging read fan-out flushes)."""
        high = sum(self._unread(user, c) for c in self._conversations(user))
        low = sum(self._count(user, c, user.last_known.get(c, 0)) for c in self._conversations(user))
        return Total(low, high)

    def _conversations(self, user: User) -> list[str]:
        """Conversations with a state for the user: one-to-one with a message, groups they are in."""
        out = [c for c in self.messages if c.startswith("p:") and self.is_member(user.name, c)]
        out += [f"g:{gid}" for gid in user.groups]
        return [c for c in out if self.state_last(user, c) > 0]

    def state_last(self, user: User, conversation: str) -> int:
        if conversation.startswith("g:"):
            return max(self.last_seq(conversation), self.floor(user.name, conversation))
        return self.last_seq(conversation)

    def _catch_up(self, user: User, conversation: str) -> None:
        user.last_known[conversation] = self.last_seq(conversation)

    # -- send

    def send(self, name: str, device: str, conversation: str, cmid: str, type_: str, body: dict[str, Any], new_mid: int | None) -> dict[str, Any]:
        """The ``sent`` reply; ``new_mid`` is the mid the server's reply gave, used if the message is new."""
        if not self.is_member(name, conversation):
            raise Refused("forbidden")
        peer = self.direct_peer(name, conversation)
        seen = self.dedup.get((conversation, name, cmid))
        if peer is not None:
            try:
                self._may_write(name, peer)
            except Refused:
                if seen is None:
                    raise
                # a resend of a message stored before the block (or privacy change): not a new
                # message, so it gets its first answer (and marks nothing)
                return {"op": "sent", "cmid": cmid, "conversation": conversation, "mid": seen.mid, "seq": seen.seq}
        if seen is not None:  # a resend: the first answer, nothing stored, nothing pushed
            self._wrote(name, peer)
            return {"op": "sent", "cmid": cmid, "conversation": conversation, "mid": seen.mid, "seq": seen.seq}
        assert new_mid is not None, f"the server refused a send into {conversation} that the model accepts"
        self._wrote(name, peer)
        members = self.members(conversation)
        mode = "read" if conversation.startswith("g:") and len(members) >= self.threshold else "write"
        seq = self.last_seq(conversation) + 1
        message = Message(new_mid, seq, conversation, name, cmid, type_, body, mode, seen_ms=now_ms(), sent_body=body)
        self.messages.setdefault(conversation, []).append(message)
        self.dedup[(conversation, name, cmid)] = message
        self.by_mid[new_mid] = message
        sender = self.user(name)
        if mode == "read":
            self.read_mark[conversation[2:]] = message.seq
            sender.read[conversation] = max(sender.read.get(conversation, 0), message.seq)
            self._catch_up(sender, conversation)
            for member in members:
                self._push(self.user(member), MsgPush(message, None, message.state()), skip=device)
        else:
            for member in members:
                user = self.user(member)
                user.inbox[new_mid] = message
                if len(user.inbox) > self.inbox_limit:
                    del user.inbox[min(user.inbox)]
                if member == name:
                    user.read[conversation] = message.seq
                self._catch_up(user, conversation)
                unread = {"conversation": conversation, "count": self._unread(user, conversation), "total": self.total(user)}
                self._push(user, MsgPush(message, unread, message.state()), skip=device if member == name else "")
        return {"op": "sent", "cmid": cmid, "conversation": conversation, "mid": message.mid, "seq": message.seq}

    def direct_peer(self, name: str, conversation: str) -> str | None:
        """The other user of a one-to-one conversation of ``name``'s; None for a group or notes
        to oneself (no rule of the social graph applies to them: one cannot block oneself)."""
        if not conversation.startswith("p:"):
            return None
        low, high = conversation.split(":")[1:]
        return None if low == high else (high if low == name else low)

    def account_refusal(self, name: str) -> str | None:
        """The code a user id without an active account earns where it is named, else None."""
        if self.accounts is not None and name not in self.accounts:
            return "not_found"
        return "user_deactivated" if name in self.deactivated else None

    def _may_write(self, sender: str, recipient: str) -> None:
        """The rules of a one-to-one send, in the protocol's order. They judge new messages: a
        resend of a stored one that they refuse now still gets its first answer."""
        code = self.account_refusal(recipient)
        if code:
            raise Refused(code)
        s, r = self.user(sender), self.user(recipient)
        if sender in r.blocked or recipient in s.blocked:
            raise Refused("blocked")
        if r.dm == "contacts" and sender not in r.contacts and sender not in r.wrote_to:
            raise Refused("contacts_only")

    def _wrote(self, sender: str, recipient: str | None) -> None:
        """A sender writing to a non-contact lets them answer, should the sender take messages
        from contacts only now or later (every send that passes counts, a resend too: the check
        and its mark precede de-duplication)."""
        user = self.user(sender)
        if recipient is not None and recipient not in user.contacts:
            user.wrote_to.add(recipient)

    # -- read, ack, delete

    def read(self, name: str, device: str, conversation: str, seq: int) -> dict[str, Any]:
        """The ``unread`` reply (its total a Total); the user's other devices get the same frame."""
        if not self.is_member(name, conversation):
            raise Refused("not_found")
        user = self.user(name)
        if conversation.startswith("g:"):
            self._catch_up(user, conversation)
        if user.conversation_settings.get(conversation, {}).pop("marked_unread", False):  # a read ends it
            # a change, so the other devices hear of it (before the read's own push)
            self._tell(name, {"op": "conversation_settings", "conversation": conversation, **self.settings(user, conversation)}, skip=device)
        upto = min(seq, self.state_last(user, conversation))
        before = user.read.get(conversation, 0)
        user.read[conversation] = max(before, upto)
        peer = self.direct_peer(name, conversation)
        if peer is not None and user.read[conversation] > before:  # a read receipt for the peer
            receipt = {"op": "receipt", "conversation": conversation, "user": name, "read_seq": user.read[conversation]}
            self._tell(peer, receipt)
        return {
            "op": "unread", "conversation": conversation, "count": self._unread(user, conversation),
            "total": self.total(user), "read_seq": user.read[conversation],
        }

    def read_seen(self, name: str, device: str, reply: dict[str, Any]) -> None:
        """The read reply as the server sent it: the other devices get exactly that."""
        self._push(self.user(name), UnreadPush(reply), skip=device)

    def ack(self, name: str, mids: list[int]) -> dict[str, Any]:
        user = self.user(name)
        removed = 0
        for mid in mids:
            if user.inbox.pop(mid, None) is not None:
                removed += 1
        return {"op": "acked", "removed": removed}

    def delete(self, name: str, conversation: str, mid: int) -> dict[str, Any]:
        if not self.is_member(name, conversation):
            raise Refused("not_found")
        user = self.user(name)
        user.deleted.add(mid)
        user.inbox.pop(mid, None)
        return {"op": "deleted", "conversation": conversation, "mid": mid}

    # -- recall and edit (the recall_edit plugin)

    def _message_seen_by(self, name: str, conversation: str, seq: int) -> Message:
        """The message at ``seq`` if ``name`` may see it (a member, joined before it), else
        ``not_found``: a seq that does not exist and one the user may not see read alike."""
        if not self.is_member(name, conversation):
            raise Refused("not_found")
        if not self.floor(name, conversation) < seq <= self.last_seq(conversation):
            raise Refused("not_found")
        return self.messages[conversation][seq - 1]

    def _late(self, message: Message, window_ms: int, asked: tuple[int, int]) -> bool | None:
        """Whether the window from ``sent_at_ms`` had passed when the server judged it, somewhere
        in ``asked`` (the test's clock before the request and after the reply): True, False, or
        None where the window ended within that time (either answer is right). A message whose
        ``sent_at_ms`` no frame has shown yet was sent at most a send's timeout before the
        model stored it."""
        sent_low = message.sent_at_ms if message.sent_at_ms is not None else message.seen_ms - 15_000
        sent_high = message.sent_at_ms if message.sent_at_ms is not None else message.seen_ms
        if asked[1] - sent_low < window_ms:
            return False
        if asked[0] - sent_high > window_ms:
            return True
        return None

    def _past_the_log(self, conversation: str, seq: int) -> bool:
        """A message the Redis log may no longer hold (older than its newest ``log_limit``,
        and archived): the server refuses to change it with ``message.too_late``, windows and
        roles aside (core/amending.py)."""
        return seq <= self.last_seq(conversation) - self.log_limit

    def _privileged(self, name: str, conversation: str) -> bool:
        """A group's owner or admin: may recall any message there, any time."""
        group = self.groups.get(conversation[2:]) if conversation.startswith("g:") else None
        return group is not None and group.roles.get(name) in (OWNER, ADMIN)

    def recall(
        self, name: str, device: str, conversation: str, seq: int, asked: tuple[int, int], answered: dict[str, Any]
    ) -> dict[str, Any]:
        """The ``message.recall`` reply with the tombstone; ``answered`` is the server's reply,
        whose ``recalled_at_ms`` the model takes, and which it follows where either answer is
        right (the window's edge; which of two refusals, or the tombstone, an already recalled
        message gets from someone who may not recall it: the protocol does not order them).

        Every device of every member gets ``recalled`` but the requesting connection (the reply
        answers it); each member who had not read it counts it read, so their count drops by one
        (once), and their devices get ``unread``. A recall of a recalled message changes nothing
        and pushes nothing."""
        message = self._message_seen_by(name, conversation, seq)
        if self._past_the_log(conversation, seq) and answered.get("code") == "message.too_late":
            raise Refused("message.too_late")
        refused: list[str] = []
        if not self._privileged(name, conversation):
            if message.sender != name:
                refused.append("message.not_yours")
            else:
                late = self._late(message, self.recall_window_ms, asked)
                if late or (late is None and answered.get("code") == "message.too_late"):
                    refused.append("message.too_late")
        if refused and not (message.recalled and answered.get("op") == "message.recall"):
            raise Refused(*refused)
        message.learn(answered.get("message", {}))
        if message.recalled:
            return {"op": "message.recall", "message": message.frame()}
        message.learn(answered.get("message", {}))
        at = answered.get("message", {}).get("recalled_at_ms")
        assert isinstance(at, int), f"the server refused a recall the model accepts: {answered}"
        message.body = {}
        message.recalled_at_ms, message.recalled_by = at, name
        pushed = {"op": "recalled", "conversation": conversation, "seq": seq, "mid": message.mid, "by": name, "at_ms": at}
        for member in self.members(conversation):
            user = self.user(member)
            self._push(user, FramePush(pushed), skip=device)
            read = user.read.get(conversation, 0)
            if read >= seq:
                continue
            user.recalled.setdefault(conversation, set()).add(seq)
            # the count drops where the server's last seq for them had reached the message: at
            # once in write fan-out; in read fan-out once their flush counted it (which the model
            # knows only from last_known), so there the push may or may not come
            known = user.last_known.get(conversation, 0)
            low = self._count(user, conversation, max(known, seq))
            count = low if low == self._unread(user, conversation) else Total(low, self._unread(user, conversation))
            frame = {"op": "unread", "conversation": conversation, "count": count, "read_seq": read, "total": self.total(user)}
            self._push(user, RangedUnreadPush(frame) if known >= seq else MaybePush(RangedUnreadPush(frame)))
        return {"op": "message.recall", "message": message.frame()}

    def edit(
        self, name: str, device: str, conversation: str, seq: int, body: dict[str, Any], asked: tuple[int, int],
        answered: dict[str, Any],
    ) -> dict[str, Any]:
        """The ``message.edit`` reply with the new version (``edited_at_ms`` from ``answered``);
        every device of every member gets ``edited`` but the requesting connection.
        The body as it is already answers the current version and changes nothing. Where
        several refusals apply the protocol does not order them: any of them."""
        message, same = self.edit_check(name, conversation, seq, body, asked, answered)
        message.learn(answered.get("message", {}))
        if same:  # a resend of the edit that made it so (or of the original body)
            return {"op": "message.edit", "message": message.frame()}
        message.learn(answered.get("message", {}))
        at = answered.get("message", {}).get("edited_at_ms")
        assert isinstance(at, int), f"the server refused an edit the model accepts: {answered}"
        message.body = body
        message.version += 1
        message.edited_at_ms = at
        pushed = {"op": "edited", "message": message.frame()}
        for member in self.members(conversation):
            self._push(self.user(member), FramePush(pushed), skip=device)
        return {"op": "message.edit", "message": message.frame()}

    def edit_check(
        self, name: str, conversation: str, seq: int, body: dict[str, Any], asked: tuple[int, int], answered: dict[str, Any]
    ) -> tuple[Message, bool]:
        """The message an edit changes and whether ``body`` is its body already, or Refused."""
        message = self._message_seen_by(name, conversation, seq)
        if self._past_the_log(conversation, seq) and answered.get("code") == "message.too_late":
            raise Refused("message.too_late")
        refused = []
        if message.sender != name:
            refused.append("message.not_yours")
        if message.recalled:
            refused.append("message.recalled")
        if message.type != "text":
            refused.append("message.not_text")
        late = self._late(message, self.edit_window_ms, asked)
        if late or (late is None and answered.get("code") == "message.too_late"):
            refused.append("message.too_late")
        same = body == message.body
        if refused and not (refused == ["message.too_late"] and same and answered.get("op") == "message.edit"):
            raise Refused(*refused)
        return message, same

    # -- receipts

    def _receipts_allowed(self, name: str, conversation: str) -> list[str]:
        """The members whose read positions receipts show (groups below the threshold only)."""
        if not self.is_member(name, conversation):
            raise Refused("not_found")
        members = self.members(conversation)
        if conversation.startswith("g:") and len(members) >= self.threshold:
            raise Refused("receipts_unavailable")
        return members

    def _audience(self, conversation: str, members: list[str], message: Message) -> list[str]:
        """Whose reads a receipt counts: the members now, but the sender, who were there when
        it was sent (a later member sees nothing before their joining point)."""
        return [m for m in members if m != message.sender and self.floor(m, conversation) < message.seq]

    def receipts(self, name: str, conversation: str, seqs: list[int]) -> dict[str, Any]:
        """Per seq, in the order asked: how many of its audience have read it (read seq >=
        seq), of how many there are."""
        members = self._receipts_allowed(name, conversation)
        messages = [self._message_seen_by(name, conversation, seq) for seq in seqs]
        out = []
        for message in messages:
            others = self._audience(conversation, members, message)
            read = sum(1 for m in others if self.user(m).read.get(conversation, 0) >= message.seq)
            out.append({"seq": message.seq, "read": read, "members": len(others)})
        return {"op": "receipts", "conversation": conversation, "receipts": out}

    def readers(self, name: str, conversation: str, seq: int) -> dict[str, Any]:
        members = self._receipts_allowed(name, conversation)
        message = self._message_seen_by(name, conversation, seq)
        others = self._audience(conversation, members, message)
        read = [m for m in others if self.user(m).read.get(conversation, 0) >= seq]
        unread = sorted(set(others) - set(read))
        return {"op": "readers", "conversation": conversation, "seq": seq, "read": sorted(read), "unread": unread}

    # -- history and sync

    def history(self, name: str, conversation: str, before_seq: int | None, limit: int) -> tuple[list[Message], int | None]:
        """The page's visible messages (newest first) and ``next_before_seq``."""
        if not self.is_member(name, conversation):
            raise Refused("not_found")
        floor = self.floor(name, conversation)
        upper = before_seq if before_seq is not None else self.last_seq(conversation) + 1
        seqs = list(range(min(upper - 1, self.last_seq(conversation)), floor, -1))[:limit]
        page = [self.messages[conversation][seq - 1] for seq in seqs]
        deleted = self.user(name).deleted
        return [m for m in page if m.mid not in deleted], (seqs[-1] if seqs and seqs[-1] > floor + 1 else None)

    def _peer_read(self, name: str, conversation: str) -> dict[str, int]:
        """A one-to-one conversation's state has the peer's read seq (left out while 0; a note
        to oneself has no peer)."""
        peer = self.direct_peer(name, conversation)
        seq = self.user(peer).read.get(conversation, 0) if peer is not None else 0
        return {"peer_read_seq": seq} if seq else {}

    def sync(self, name: str, before_mid: int | None, limit: int) -> dict[str, Any]:
        """The expected ``sync`` reply, messages as Message objects (newest first)."""
        user = self.user(name)
        mids = sorted((mid for mid in user.inbox if before_mid is None or mid < before_mid), reverse=True)
        page = mids[:limit]
        reply: dict[str, Any] = {"messages": [user.inbox[mid] for mid in page], "next_before_mid": page[-1] if len(mids) > limit else None}
        if before_mid is None:
            for gid in sorted(user.groups):
                self._catch_up(user, f"g:{gid}")
            reply["conversations"] = [
                {
                    "conversation": c, "last_seq": self.state_last(user, c), "read_seq": user.read.get(c, 0),
                    "unread": self._unread(user, c), **self.settings(user, c), **self._peer_read(name, c),
                }
                for c in sorted(self._conversations(user))
            ]
            reply["total_unread"] = sum(state["unread"] for state in reply["conversations"])
            merged = {m.mid: m for m in reply["messages"]}
            for gid in sorted(user.groups):
                mark = self.read_mark.get(gid, 0)
                conversation = f"g:{gid}"
                floor = max(user.read.get(conversation, 0), self.floor(name, conversation))
                # the conversation log holds the newest log_limit messages
                lowest = max(floor, self.last_seq(conversation) - self.log_limit)
                seqs = list(range(mark, lowest, -1))[:limit]
                for seq in seqs:
                    message = self.messages[conversation][seq - 1]
                    if message.mid not in user.deleted:
                        merged.setdefault(message.mid, message)
            reply["messages"] = [merged[mid] for mid in sorted(merged, reverse=True)]
        return reply

    # -- groups

    def _role(self, gid: str, name: str) -> str:
        group = self.groups.get(gid)
        if group is None or name not in group.roles:
            raise Refused("not_found")
        return group.roles[name]

    def _join(self, group: Group, names: list[str]) -> None:
        seq = self.last_seq(group.conversation)
        for name in names:
            user = self.user(name)
            group.joined[name] = seq
            user.groups.add(group.gid)
            user.read[group.conversation] = seq
            user.last_known[group.conversation] = seq

    def _may_add(self, actor: str, users: list[str]) -> None:
        """Every user named (the actor aside) must have an account, and neither of the actor and
        them may block the other; one refusal adds nobody. Which of two refusals is reported
        when the list holds both the protocol does not say: either code."""
        codes = []
        for name in users:
            if name == actor:
                continue
            code = self.account_refusal(name)
            if code:
                codes.append(code)
            elif actor in self.user(name).blocked or name in self.user(actor).blocked:
                codes.append("blocked")
        if codes:
            raise Refused(*sorted(set(codes)))

    def create_group(self, owner: str, gid: str | None, name: str, members: list[str]) -> dict[str, Any]:
        """The ``group`` reply; ``gid`` is the one the server's reply gave (None if it refused)."""
        self._may_add(owner, members)
        assert gid is not None, "the server refused a create_group that the model accepts"
        roles = {member: MEMBER for member in members if member != owner}
        roles[owner] = OWNER
        group = Group(gid, name, dict(roles), {})
        self.groups[gid] = group
        self._join(group, sorted(roles))
        return {"op": "group", "gid": gid, "conversation": f"g:{gid}", "name": name, "members": roles}

    def add_members(self, actor: str, gid: str, users: list[str]) -> dict[str, Any]:
        if self._role(gid, actor) not in (OWNER, ADMIN):
            raise Refused("forbidden")
        self._may_add(actor, users)
        group = self.groups[gid]
        new = sorted(set(users) - set(group.roles))
        for name in new:
            group.roles[name] = MEMBER
        self._join(group, new)
        return {"op": "members_added", "gid": gid, "added": new}

    def _leave(self, group: Group, name: str) -> None:
        user = self.user(name)
        del group.roles[name]
        del group.joined[name]
        user.groups.discard(group.gid)
        for state in (user.read, user.last_known, user.recalled):
            state.pop(group.conversation, None)
        for mid in [mid for mid, message in user.inbox.items() if message.conversation == group.conversation]:
            del user.inbox[mid]  # the group's messages leave the inbox with them (server: forget.lua)

    def remove_member(self, actor: str, gid: str, name: str) -> dict[str, Any]:
        actor_role = self._role(gid, actor)
        group = self.groups[gid]
        if name not in group.roles:
            raise Refused("not_found")
        role = group.roles[name]
        if not ((actor_role == OWNER and role != OWNER) or (actor_role == ADMIN and role == MEMBER)):
            raise Refused("forbidden")
        self._leave(group, name)
        return {"op": "member_removed", "gid": gid, "user": name}

    def leave_group(self, name: str, gid: str) -> dict[str, Any]:
        if self._role(gid, name) == OWNER:
            raise Refused("forbidden")
        self._leave(self.groups[gid], name)
        return {"op": "left", "gid": gid}

    def set_role(self, actor: str, gid: str, name: str, role: str) -> dict[str, Any]:
        if self._role(gid, actor) != OWNER:
            raise Refused("forbidden")
        group = self.groups[gid]
        if name not in group.roles:
            raise Refused("not_found")
        if name == actor:
            raise Refused("bad_frame")
        group.roles[name] = role
        if role == OWNER:
            group.roles[actor] = ADMIN
        return {"op": "role_set", "gid": gid, "user": name, "role": role}

    def group_members(self, actor: str, gid: str) -> dict[str, Any]:
        self._role(gid, actor)
        return {"op": "group_members", "gid": gid, "members": dict(self.groups[gid].roles)}

    def my_groups(self, name: str) -> dict[str, Any]:
        user = self.user(name)
        return {"op": "my_groups", "groups": [
            {"gid": gid, "conversation": f"g:{gid}", "name": self.groups[gid].name, "role": self.groups[gid].roles[name]}
            for gid in sorted(user.groups)
        ]}

    # -- contacts, blocks, privacy

    def _tell(self, name: str, frame: dict[str, Any], skip: str = "") -> None:
        self._push(self.user(name), FramePush(frame), skip=skip)

    def _change(self, actor: str, device: str, peer: str, reply: dict[str, Any], peer_event: str | None = None) -> dict[str, Any]:
        """The reply ``contact`` {event, user: peer, ...}: the actor's other devices get it as it
        is, the peer (unless ``peer_event`` is None) with ``peer_event`` and ``user``: the actor."""
        frame = {"op": "contact", **reply}
        self._tell(actor, frame, skip=device)
        if peer_event is not None:
            self._tell(peer, {**frame, "event": peer_event, "user": actor})
        return frame

    def _target(self, name: str, peer: str) -> None:
        """A request or a block names another user with an active account."""
        if peer == name:
            raise Refused("bad_frame")
        code = self.account_refusal(peer)
        if code:
            raise Refused(code)

    def _ending(self, name: str, peer: str, exists: bool) -> None:
        """Accept, decline, cancel, remove and unblock name another user, and something between
        the two that exists (``not_found`` otherwise). A user without an active account: the
        protocol lists ``not_found`` / ``user_deactivated`` for contact operations without
        saying whether that comes before "no such request"; the model takes either there, and
        lets a user end what exists with a deactivated account (a cancel, a removal, an unblock)
        rather than keep it forever."""
        if peer == name:
            raise Refused("bad_frame")
        if not exists:
            raise Refused(*sorted({"not_found", self.account_refusal(peer) or "not_found"}))

    def _link(self, name: str, device: str, peer: str, since_ms: int) -> dict[str, Any]:
        me, them = self.user(name), self.user(peer)
        me.contacts[peer] = them.contacts[name] = since_ms
        me.requests_out.pop(peer, None)
        them.requests_out.pop(name, None)
        return self._change(name, device, peer, {"event": "accepted", "user": peer, "since_ms": since_ms}, "accepted")

    def contact_request(self, name: str, device: str, peer: str, note: str, stamp: int | None) -> dict[str, Any]:
        """``request_sent`` (``at_ms`` = ``stamp``, the time the reply gave), or ``accepted``
        (``since_ms`` = ``stamp``) if the peer had asked already."""
        self._target(name, peer)
        me, them = self.user(name), self.user(peer)
        if peer in me.blocked or name in them.blocked:
            raise Refused("blocked")
        if peer in me.contacts or peer in me.requests_out:
            raise Refused("conflict")
        assert isinstance(stamp, int), "the server refused a contact request that the model accepts"
        if name in them.requests_out:
            return self._link(name, device, peer, stamp)
        me.requests_out[peer] = {"note": note, "at_ms": stamp}
        sent = {"event": "request_sent", "user": peer, "note": note, "at_ms": stamp}
        return self._change(name, device, peer, sent, "request_received")

    def contact_accept(self, name: str, device: str, peer: str, stamp: int | None) -> dict[str, Any]:
        """Needs a pending request from the peer (``not_found`` otherwise; an accept repeated
        after it succeeded finds none)."""
        self._ending(name, peer, name in self.user(peer).requests_out)
        code = self.account_refusal(peer)  # accepting makes a contact: like a request
        if code:
            raise Refused(code)
        assert isinstance(stamp, int), "the server refused a contact accept that the model accepts"
        return self._link(name, device, peer, stamp)

    def contact_decline(self, name: str, device: str, peer: str) -> dict[str, Any]:
        self._ending(name, peer, name in self.user(peer).requests_out)
        del self.user(peer).requests_out[name]
        return self._change(name, device, peer, {"event": "declined", "user": peer}, "declined")

    def contact_cancel(self, name: str, device: str, peer: str) -> dict[str, Any]:
        self._ending(name, peer, peer in self.user(name).requests_out)
        del self.user(name).requests_out[peer]
        return self._change(name, device, peer, {"event": "cancelled", "user": peer}, "cancelled")

    def contact_remove(self, name: str, device: str, peer: str) -> dict[str, Any]:
        self._ending(name, peer, peer in self.user(name).contacts)
        del self.user(name).contacts[peer]
        self.user(peer).contacts.pop(name, None)
        return self._change(name, device, peer, {"event": "removed", "user": peer}, "removed")

    def block(self, name: str, device: str, peer: str, stamp: int | None) -> dict[str, Any]:
        """Ends the contact and the requests both ways; the blocked user is told nothing (nor
        are the actor's other devices told more than the block). The protocol names the contact
        and the requests; the model takes "unblock restores nothing" to end the first-message
        marks (``wrote_to``) both ways too: after an unblock, a contacts-only user is written
        to only by contacts again."""
        self._target(name, peer)
        me, them = self.user(name), self.user(peer)
        if peer in me.blocked:
            raise Refused("conflict")
        assert isinstance(stamp, int), "the server refused a block that the model accepts"
        me.blocked[peer] = stamp
        for one, other in ((me, them), (them, me)):
            one.contacts.pop(other.name, None)
            one.requests_out.pop(other.name, None)
            one.wrote_to.discard(other.name)
        return self._change(name, device, peer, {"event": "blocked", "user": peer, "at_ms": stamp})

    def unblock(self, name: str, device: str, peer: str) -> dict[str, Any]:
        self._ending(name, peer, peer in self.user(name).blocked)
        del self.user(name).blocked[peer]
        return self._change(name, device, peer, {"event": "unblocked", "user": peer})

    def set_privacy(self, name: str, device: str, dm: str | None, presence: str | None) -> dict[str, Any]:
        """The ``privacy`` reply, the same frame pushed to the user's other devices."""
        user = self.user(name)
        before = (user.dm, user.presence)
        user.dm = dm or user.dm
        user.presence = presence or user.presence
        frame = {"op": "privacy", "dm": user.dm, "presence": user.presence}
        if (user.dm, user.presence) != before:
            self._tell(name, frame, skip=device)
        return frame

    def contact_lists(self, name: str) -> dict[str, list[dict[str, Any]]]:
        """What ``contacts``, ``contact_requests`` and ``blocked`` list, each by user id, with the
        fields the model knows (profiles aside)."""
        user = self.user(name)
        return {
            "contacts": [{"user": peer, "since_ms": since} for peer, since in sorted(user.contacts.items())],
            "incoming": [{"user": peer, **self.users[peer].requests_out[name]} for peer in self.incoming(name)],
            "outgoing": [{"user": peer, **request} for peer, request in sorted(user.requests_out.items())],
            "blocked": [{"user": peer, "at_ms": at} for peer, at in sorted(user.blocked.items())],
        }

    def incoming(self, name: str) -> list[str]:
        """Who asked ``name`` to be a contact, pending."""
        return sorted(peer for peer, other in self.users.items() if name in other.requests_out)

    # -- conversation settings

    def settings(self, user: User, conversation: str) -> dict[str, bool]:
        """The user's settings of a conversation as sync and ``conversation_settings`` show
        them: hidden while no message came after the one that was last when it was hidden."""
        stored = user.conversation_settings.get(conversation, {})
        hidden_seq = stored.get("hidden_seq")
        return {
            "pinned": stored.get("pinned", False), "muted": stored.get("muted", False),
            "hidden": hidden_seq is not None and self.last_seq(conversation) <= hidden_seq,
            "marked_unread": stored.get("marked_unread", False),
        }

    def set_conversation(self, name: str, device: str, conversation: str, changes: dict[str, bool]) -> dict[str, Any]:
        """The ``conversation_settings`` reply, the same frame pushed to the user's other devices.
        Settings outlive a membership (the protocol does not say they end with it)."""
        if not self.is_member(name, conversation):
            raise Refused("not_found")
        user = self.user(name)
        before = self.settings(user, conversation)
        stored = user.conversation_settings.setdefault(conversation, {})
        stored.update({key: value for key, value in changes.items() if key != "hidden"})
        if "hidden" in changes:
            stored["hidden_seq"] = self.last_seq(conversation) if changes["hidden"] else None
        after = self.settings(user, conversation)
        frame = {"op": "conversation_settings", "conversation": conversation, **after}
        if after != before:
            self._tell(name, frame, skip=device)
        return frame

    # -- what the test may pick from

    def visible(self, name: str, conversation: str) -> list[Message]:
        """The messages a member may see in a conversation (after their join), oldest first."""
        floor = self.floor(name, conversation) if self.is_member(name, conversation) else 0
        return self.messages.get(conversation, [])[floor:]

    def conversations_of(self, name: str) -> list[str]:
        """The user's conversations that sync lists."""
        return sorted(self._conversations(self.user(name)))

    def sent_by(self, name: str) -> list[Message]:
        return [m for (c, sender, _), m in self.dedup.items() if sender == name]
