"""The frames the gateway sends to clients, built from the services' typed results and
notifications: the one place that knows their wire shapes (docs/protocol.md, "Server → client")."""

from __future__ import annotations

from dataclasses import asdict, fields
from functools import singledispatch
from typing import TYPE_CHECKING, Any

from imflow.core import accounts, contacts, conversation_settings, conversations, groups, notifications, presence, receipts
from imflow.core.conversations import Unread
from imflow.core.errors import ErrorCode

if TYPE_CHECKING:
    from collections.abc import Callable

    from imflow.core.errors import ImflowError

Frame = dict[str, Any]


def error(problem: ImflowError, ref: Any = None) -> Frame:
    """``error`` {code, message, retry_after_ms if a limit refused, ref if the request had one}."""
    frame: Frame = {"op": "error", "code": str(problem.code), "message": problem.message}
    if getattr(problem, "retry_after_ms", None) is not None:
        frame["retry_after_ms"] = problem.retry_after_ms
    if ref is not None:
        frame["ref"] = ref
    return frame


def pong() -> Frame:
    return {"op": "pong"}


@singledispatch
def reply(result: object) -> Frame:
    """The reply frame for a service's result (raises TypeError for a result without one)."""
    raise TypeError(f"no frame for {type(result).__name__}")


@reply.register
def _(result: Unread) -> Frame:
    # the reply to 'read' and the push to the user's other connections: the same frame
    return {"op": "unread", **result.to_dict()}


@reply.register
def _(result: conversations.SyncPage) -> Frame:
    frame: Frame = {"op": "sync", "messages": result.messages, "next_before_mid": result.next_before_mid}
    if result.conversations is not None:  # the first page
        frame["conversations"], frame["total_unread"] = result.conversations, result.total_unread
    return frame


@reply.register
def _(result: groups.MyGroups) -> Frame:
    return {"op": "my_groups", "groups": [_fields(group) for group in result.groups]}


def _fields(result: Any) -> Frame:
    """A result dataclass's fields as they are (not copied: a history page's messages stay put)."""
    return {field.name: getattr(result, field.name) for field in fields(result)}


# results whose frame is the reply's op and their fields, flat
FLAT = {
    conversations.Acknowledged: "acked",
    conversations.HistoryPage: "history",
    conversations.Deleted: "deleted",
    receipts.Receipts: "receipts",
    receipts.Readers: "readers",
    groups.GroupCreated: "group",
    groups.MembersAdded: "members_added",
    groups.MemberRemoved: "member_removed",
    groups.GroupLeft: "left",
    groups.RoleSet: "role_set",
    groups.GroupMembers: "group_members",
}
for _result_type, _op in FLAT.items():
    reply.register(_result_type, lambda result, op=_op: {"op": op, **_fields(result)})


# -- accounts and the social graph (docs/protocol.md, "Accounts, contacts, blocking and presence")

PUBLIC_PROFILE = ("user", "status", "display_name", "avatar_url", "custom")  # a profile as other users see it


@reply.register
def _(result: accounts.Profiles) -> Frame:
    shown = [{name: getattr(profile, name) for name in PUBLIC_PROFILE} for profile in result.profiles]
    if result.mine is not None:  # the asker's own entry: their privacy settings too
        for entry in shown:
            if entry["user"] == result.asker:
                entry.update(result.mine.to_dict())
    return {"op": "profiles", "profiles": shown, "unknown": result.unknown}


@reply.register
def _(result: contacts.ContactList) -> Frame:
    return {"op": "contacts", "contacts": [asdict(contact) for contact in result.contacts]}


@reply.register
def _(result: contacts.RequestLists) -> Frame:
    return {
        "op": "contact_requests",
        "incoming": [asdict(request) for request in result.incoming],
        "outgoing": [asdict(request) for request in result.outgoing],
    }


@reply.register
def _(result: contacts.BlockedList) -> Frame:
    return {"op": "blocked", "users": [asdict(user) for user in result.users]}


# results whose frame is the reply's op and the result's ``to_dict()``; each is also what the
# user's other connections (or a contact's watching ones) are pushed, as the same frame
AS_DICT = {
    accounts.Privacy: "privacy",
    contacts.ContactEvent: "contact",
    conversation_settings.ConversationSettings: "conversation_settings",
    presence.PresenceStates: "presence",
}
for _result_type, _op in AS_DICT.items():
    reply.register(_result_type, lambda result, op=_op: {"op": op, **result.to_dict()})


def _as_sent(notification: dict[str, Any]) -> Frame:
    """A notification whose client frame is its fields as they travel, ``op`` for ``kind``."""
    return {"op": notification["kind"], **{key: value for key, value in notification.items() if key != "kind"}}


# -- service notifications (core/notifications.py), as they travel between worker and gateway


# kind -> frame builder for the social graph's notifications: the same frames as the replies
PUSHES: dict[str, Callable[[dict[str, Any]], Frame]] = dict.fromkeys(
    (
        accounts.PrivacyChanged.kind, contacts.ContactChanged.kind,
        conversation_settings.ConversationSettingsChanged.kind, presence.PresenceChanged.kind,
        notifications.Receipt.kind,
    ),
    _as_sent,
)


def push(notification: dict[str, Any]) -> Frame:
    """The client frame for a notification as it travels (``Notification.wire()``): ``msg``,
    ``sent``, the ``error`` frame with code ``rejected``, ``unread``, or one of ``PUSHES``
    (``contact``, ``privacy``, ``conversation_settings``, ``presence``, ``receipt``).

    Raises KeyError for a kind this gateway does not know (a newer worker): the caller logs it.
    """
    n, kind = notification, notification["kind"]
    if kind in PUSHES:
        return PUSHES[kind](n)
    if kind == "msg":
        frame: Frame = {"op": "msg", "message": n["message"]}
        if "unread" in n:
            frame["unread"] = n["unread"]
        return frame
    if kind == "sent":
        return {"op": "sent", "cmid": n["cmid"], "conversation": n["conversation"], "mid": n["mid"], "seq": n["seq"]}
    if kind == "rejected":
        return {"op": "error", "code": str(ErrorCode.REJECTED), "message": n["message"], "cmid": n["cmid"]}
    if kind == "unread":  # the same frame as the 'read' reply
        return {"op": "unread", **{key: value for key, value in n.items() if key != "kind"}}
    raise KeyError(f"unknown notification kind {kind!r}")
