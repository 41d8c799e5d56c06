"""The client frames of service notifications (core/notifications.py), built here at the gateway.

Each notification kind maps to exactly one frame of docs/protocol.md: ``sent``, ``msg`` and
the ``error`` frame with code ``rejected``.
"""

from __future__ import annotations

from typing import Any

from imflow.core.errors import ErrorCode


def frame_of(push: dict[str, Any]) -> dict[str, Any]:
    """The client frame for a notification as it travels (``Notification.wire()``).

    Raises KeyError for a kind this gateway does not know (a newer worker): the caller logs it.
    """
    kind = push["kind"]
    if kind == "msg":
        frame: dict[str, Any] = {"op": "msg", "message": push["message"]}
        if "unread" in push:
            frame["unread"] = push["unread"]
        return frame
    if kind == "sent":
        return {"op": "sent", "cmid": push["cmid"], "conversation": push["conversation"], "mid": push["mid"], "seq": push["seq"]}
    if kind == "rejected":
        return {"op": "error", "code": str(ErrorCode.REJECTED), "message": push["message"], "cmid": push["cmid"]}
    raise KeyError(f"unknown notification kind {kind!r}")
