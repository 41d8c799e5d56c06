"""The one Redis key scheme.

Keys that one Lua script touches share a Redis Cluster hash tag: ``{c:<conversation>}`` for a
conversation's state, ``{u:<user>}`` for a user's.
"""

from __future__ import annotations

PREFIX = "im"


def conversation_tag(conversation: str) -> str:
    return f"{{c:{conversation}}}"


def conversation_seq(conversation: str) -> str:
    """Counter holding the conversation's last assigned seq."""
    return f"{PREFIX}:{conversation_tag(conversation)}:seq"


def conversation_log(conversation: str) -> str:
    """Sorted set of the conversation's messages, score = seq."""
    return f"{PREFIX}:{conversation_tag(conversation)}:log"


def dedup(conversation: str, sender: str, client_msg_id: str) -> str:
    """``mid:seq`` already given to this (sender, client message id) in this conversation."""
    return f"{PREFIX}:{conversation_tag(conversation)}:dedup:{sender}:{client_msg_id}"


def gateway_channel(node: str) -> str:
    """Pub/sub channel of one gateway: sender ACKs and pushes for the connections it holds."""
    return f"{PREFIX}:gw:{node}"
