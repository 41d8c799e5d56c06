"""Mentions (docs/protocol.md, "Mentions"): who a text message mentions, the check a send with
mentions must pass, and the "mentions me" count a user sees per conversation.

A ``text`` body may name up to 50 members (``mentions``) and, for a group's owner and admins,
everyone (``mention_all``). The records behind the counts are core/storage/mentions.py's; the
send path writes them as it fans a message out (core/sending.py), a read drops those at or
below the read seq.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ErrorCode, ImflowError
from .models import group_id
from .storage import mentions as store

if TYPE_CHECKING:
    from .models import Message, SendCommand
    from .services import Services

MENTIONING_TYPES = frozenset({"text"})  # the types whose body may carry mentions
MAY_MENTION_ALL = frozenset({"owner", "admin"})


@dataclass(frozen=True)
class Mentioned:
    """Who one message mentions: ``users`` by name, and ``everyone`` (``@all``)."""

    users: frozenset[str] = frozenset()
    everyone: bool = False

    def __bool__(self) -> bool:
        return self.everyone or bool(self.users)

    def includes(self, user: str) -> bool:
        return self.everyone or user in self.users


NOBODY = Mentioned()


def of_body(type_: str, conversation: str, body: dict[str, Any]) -> Mentioned:
    """Who a stored body of ``type_`` in ``conversation`` mentions (nobody outside groups)."""
    if type_ not in MENTIONING_TYPES or group_id(conversation) is None:
        return NOBODY
    users, everyone = body.get("mentions") or (), bool(body.get("mention_all"))
    return Mentioned(frozenset(users), everyone) if users or everyone else NOBODY


def of(message: Message) -> Mentioned:
    """Who a stored message mentions."""
    return of_body(message.type, message.conversation, message.body)


async def check(services: Services, command: SendCommand) -> None:
    """Refuse a send whose mentions may not go, before anything of it is stored (the sender is
    known to be a member, the body valid for its type).

    Raises ImflowError: ``bad_frame`` (mentions in a one-to-one conversation),
    ``not_a_member`` (a mentioned user is not in the group; the message names them),
    ``forbidden`` (``mention_all`` from a plain member).
    """
    if command.type not in MENTIONING_TYPES:
        return
    users, everyone = list(command.body.get("mentions") or ()), bool(command.body.get("mention_all"))
    if not users and not everyone:
        return
    gid = group_id(command.conversation)
    if gid is None:
        raise ImflowError(ErrorCode.BAD_FRAME, "mentions are for group conversations")
    roles = await store.roles_of(services.redis, gid, [command.sender, *users])
    missing = sorted(user for user, role in zip(users, roles[1:], strict=True) if role is None)
    if missing:
        raise ImflowError(ErrorCode.NOT_A_MEMBER, f"not in the group: {', '.join(missing)}")
    if everyone and roles[0] not in MAY_MENTION_ALL:
        raise ImflowError(ErrorCode.FORBIDDEN, "only the group's owner and admins mention everyone")


async def edited(services: Services, conversation: str, seq: int, old_body: dict[str, Any], new_body: dict[str, Any]) -> None:
    """Make the "mentions me" records follow an edit of text message ``seq`` from ``old_body``
    to ``new_body`` (call it once the log holds the new version). A mention counts while every
    version of the message has named the user (by name or ``@all``): the users the edit no
    longer names lose it, and nobody gains one (edits do not notify). Taking ``@all`` out
    drops the seq from the group's ``@all`` record (read fan-out) or else from every current
    member's record (write fan-out: a pipeline per 250 members), keeping those still named in
    a read fan-out group. Idempotent (a repeat finds nothing to drop); Redis errors raise."""
    before, after = of_body("text", conversation, old_body), of_body("text", conversation, new_body)
    redis, gid = services.redis, group_id(conversation)
    if gid is None or not before:
        return
    if before.everyone and not after.everyone:
        if await store.drop_everyone(redis, conversation, seq):
            # read fan-out: those named by name counted through the @all record; they keep it
            # on their own, if they were members when it was sent (named members are members now)
            joined = await store.joined_seqs(redis, gid, sorted(after.users))
            await store.record(redis, [user for user, at in joined.items() if at < seq], conversation, seq)
            await store.drop(redis, sorted(before.users - after.users), conversation, seq)
            return
        members = await store.members(redis, gid)
        await store.drop(redis, [member for member in members if member not in after.users], conversation, seq)
        return
    if not after.everyone:  # else @all still names everyone the old body named
        await store.drop(redis, sorted(before.users - after.users), conversation, seq)


async def count(services: Services, user: str, conversation: str) -> int:
    """The user's "mentions me" count in ``conversation`` now (0 outside groups), dropping the
    records of what they have read."""
    if group_id(conversation) is None:
        return 0
    return await store.state(services.redis, user, conversation, group=True)


async def counts(services: Services, user: str, states: list[dict[str, Any]]) -> dict[str, int]:
    """Each conversation's count for the sync's conversation ``states`` (those with none left out)."""
    return await store.counts(services.redis, user, states)
