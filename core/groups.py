"""Groups (R3), the service: who is in a group, with which role, who may change that, and who
may see a conversation.

Each change takes a typed command and writes its archive record (``im_group_events``) itself,
so every caller records it. Membership is read from Redis when it is needed (through
core/storage/groups.py), so a change is visible on every gateway and worker at once. Roles: the
owner (one), admins, members.

- the owner and admins add members; the owner adds admins (``set_role``);
- the owner removes anyone but themself, an admin removes plain members;
- anyone but the owner may leave (the owner hands the group over first).

Errors (ImflowError): ``not_found`` for a group or conversation the user is not in (they learn
nothing about it, not even that it exists) or a target user not in the group; ``forbidden``
for a change the actor's role does not allow, or past the size cap; ``bad_frame`` for a role
change that cannot be; for a user the actor may not add (core/contacts.py ``check_additions``:
no account, deactivated, either blocks the other) ``not_found``, ``user_deactivated`` or
``blocked``, and nobody is added. Group messages are not filtered by blocks.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import contacts
from .errors import ErrorCode, ImflowError
from .models import direct_members, group_conversation
from .models import group_id as group_id  # the one parser of g:<gid>; imported from here by the send path and plugins
from .plugin_types import GroupChange
from .storage import conversation_settings
from .storage import groups as store
from .storage.groups import EVENTS_TABLE as EVENTS_TABLE  # the archive table of membership changes

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .services import Services

OWNER, ADMIN, MEMBER = "owner", "admin", "member"
ROLES = (OWNER, ADMIN, MEMBER)
MAX_MEMBERS = 100_000
ONLY_ADMINS_ADD = "only the owner and admins add members"


# -- commands and results


@dataclass(frozen=True)
class CreateGroup:
    """``owner`` creates a group named ``name`` (1–100 chars) with ``members``; ``gid`` is
    chosen by the service unless given (tests, tools)."""

    owner: str
    name: str
    members: tuple[str, ...] = ()
    gid: str | None = None


@dataclass(frozen=True)
class AddMembers:
    actor: str
    gid: str
    users: tuple[str, ...]


@dataclass(frozen=True)
class RemoveMember:
    actor: str
    gid: str
    user: str


@dataclass(frozen=True)
class LeaveGroup:
    user: str
    gid: str


@dataclass(frozen=True)
class SetRole:
    actor: str
    gid: str
    user: str
    role: str


@dataclass(frozen=True)
class ListMembers:
    user: str
    gid: str


@dataclass(frozen=True)
class ListGroups:
    user: str


@dataclass(frozen=True)
class GroupCreated:
    gid: str
    conversation: str
    name: str
    members: dict[str, str]  # user -> role


@dataclass(frozen=True)
class MembersAdded:
    gid: str
    added: list[str]  # those who were not in the group before, sorted


@dataclass(frozen=True)
class MemberRemoved:
    gid: str
    user: str


@dataclass(frozen=True)
class GroupLeft:
    gid: str


@dataclass(frozen=True)
class RoleSet:
    gid: str
    user: str
    role: str


@dataclass(frozen=True)
class GroupMembers:
    gid: str
    members: dict[str, str]  # user -> role


@dataclass(frozen=True)
class GroupSummary:
    gid: str
    conversation: str
    name: str
    role: str


@dataclass(frozen=True)
class MyGroups:
    groups: list[GroupSummary] = field(default_factory=list)


# -- membership: one check, one answer


async def is_member(redis: Redis, conversation: str, user: str) -> bool:
    """Is ``user`` in ``conversation`` (``p:…``: one of its two users; ``g:…``: a member now)?"""
    pair = direct_members(conversation)
    if pair is not None:
        return user in pair
    gid = group_id(conversation)
    return gid is not None and await store.has_member(redis, gid, user)


async def require_member(services: Services, conversation: str, user: str, *, to_send: bool = False) -> None:
    """The one membership check of every use case (reads, history, deletes, sends, plugins).

    Raises ImflowError ``not_found`` if ``user`` is not in ``conversation``: a non-member learns
    nothing about it, not even that it exists. A send is the one exception (``to_send``):
    docs/protocol.md and the reference model (tests/protocol_model.py) answer it ``forbidden``.
    """
    if await is_member(services.redis, conversation, user):
        return
    if to_send:
        raise ImflowError(ErrorCode.FORBIDDEN, f"you are not a member of {conversation!r}")
    raise ImflowError(ErrorCode.NOT_FOUND, f"no conversation {conversation!r} for you")


async def may_see(redis: Redis, conversation: str, user: str, seq: int) -> bool:
    """May ``user`` see message ``seq`` (>= 1) of ``conversation`` (``p:…`` or ``g:…``)?

    The one rule history follows, for every read of per-message state (plugins' too): in a
    one-to-one conversation its two users see everything; in a group, a member sees the messages
    sent after they joined (seq above their join seq; joining again starts over), a non-member
    nothing. One round trip to Redis; raises ``redis.RedisError`` when Redis fails.
    """
    pair = direct_members(conversation)
    if pair is not None:
        return user in pair
    gid = group_id(conversation)
    if gid is None:
        return False
    member, joined = await store.membership(redis, gid, user)
    return member and seq > joined


async def seen_from(redis: Redis, conversation: str, user: str) -> int:
    """The seq after which a member sees ``conversation``: their join seq in a group, else 0."""
    gid = group_id(conversation)
    return await store.joined_seq(redis, gid, user) if gid else 0


async def _require_role(services: Services, gid: str, user: str) -> str:
    """The user's role; a non-member learns nothing about the group, not even that it exists."""
    role = await store.role_of(services.redis, gid, user)
    if role is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no group {gid!r} for you")
    return role


async def _record(services: Services, gid: str, actor: str, kind: str, changes: dict[str, str]) -> None:
    """Keep a membership change for the archive, then tell the plugins (``imflow_group_changed``)."""
    s, at_ms = services.settings, services.clock()
    await store.record(services.redis, s.app_id, s.topic_partitions, gid, actor, kind, changes, at_ms)
    await services.hooks.call.group_changed(change=GroupChange(gid, kind, dict(changes), actor, at_ms), services=services)


# -- changes


async def create(services: Services, command: CreateGroup) -> GroupCreated:
    """A new group, its owner ``command.owner``; raises ``bad_frame`` if a given gid is taken,
    and, creating nothing, ``not_found`` / ``user_deactivated`` / ``blocked`` for a member the
    owner may not add (``contacts.check_additions``)."""
    gid = command.gid or uuid.uuid4().hex[:16]
    if len(set(command.members) | {command.owner}) > MAX_MEMBERS:  # before the gid is taken
        raise ImflowError(ErrorCode.FORBIDDEN, f"a group has at most {MAX_MEMBERS} members")
    await contacts.check_additions(services, command.owner, list(command.members))
    if not await store.create_info(services.redis, gid, command.owner, command.name, services.clock()):
        raise ImflowError(ErrorCode.BAD_FRAME, f"group {gid!r} exists already")
    roles = {user: MEMBER for user in command.members if user != command.owner}
    roles[command.owner] = OWNER
    joined = await store.join(services.redis, gid, roles, actor=None, max_members=MAX_MEMBERS)
    assert not joined.full, "a new group's members were counted above"
    await _record(services, gid, command.owner, "joined", roles)
    return GroupCreated(gid, group_conversation(gid), command.name, roles)


async def add(services: Services, command: AddMembers) -> MembersAdded:
    """Add members (the owner or an admin); the result lists those who were not in the group yet.
    The role check, the cap and the write are one step in Redis; before it, adding nobody on a
    refusal, each user must pass ``contacts.check_additions`` (``not_found``,
    ``user_deactivated``, ``blocked``), checked once the actor may add at all."""
    if await _require_role(services, command.gid, command.actor) not in (OWNER, ADMIN):
        raise ImflowError(ErrorCode.FORBIDDEN, ONLY_ADMINS_ADD)
    await contacts.check_additions(services, command.actor, list(command.users))
    joined = await store.join(
        services.redis, command.gid, dict.fromkeys(command.users, MEMBER), actor=command.actor, max_members=MAX_MEMBERS
    )
    if joined.actor_missing:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no group {command.gid!r} for you")
    if joined.actor_may_not:
        raise ImflowError(ErrorCode.FORBIDDEN, ONLY_ADMINS_ADD)
    if joined.full:
        raise ImflowError(ErrorCode.FORBIDDEN, f"a group has at most {MAX_MEMBERS} members")
    await _record(services, command.gid, command.actor, "joined", dict.fromkeys(joined.added, MEMBER))
    return MembersAdded(command.gid, joined.added)


async def remove(services: Services, command: RemoveMember) -> MemberRemoved:
    """The owner removes anyone but themself, an admin removes plain members."""
    gid = command.gid
    actor_role = await _require_role(services, gid, command.actor)
    user_role = await store.role_of(services.redis, gid, command.user)
    if user_role is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"{command.user} is not in the group")
    allowed = (actor_role == OWNER and user_role != OWNER) or (actor_role == ADMIN and user_role == MEMBER)
    if not allowed:
        raise ImflowError(ErrorCode.FORBIDDEN, f"a group's {actor_role} cannot remove its {user_role}")
    await store.leave(services.redis, gid, command.user)
    await conversation_settings.forget(services.redis, command.user, group_conversation(gid))
    await _record(services, gid, command.actor, "removed", {command.user: ""})
    return MemberRemoved(gid, command.user)


async def leave(services: Services, command: LeaveGroup) -> GroupLeft:
    """Anyone but the owner leaves (the owner hands the group over first)."""
    if await _require_role(services, command.gid, command.user) == OWNER:
        raise ImflowError(ErrorCode.FORBIDDEN, "the owner cannot leave; make someone else owner first")
    await store.leave(services.redis, command.gid, command.user)
    await conversation_settings.forget(services.redis, command.user, group_conversation(command.gid))
    await _record(services, command.gid, command.user, "left", {command.user: ""})
    return GroupLeft(command.gid)


async def set_role(services: Services, command: SetRole) -> RoleSet:
    """The owner makes a member an admin or an admin a member, or hands ownership over (the old
    owner becomes an admin)."""
    gid, actor, user, role = command.gid, command.actor, command.user, command.role
    if await _require_role(services, gid, actor) != OWNER:
        raise ImflowError(ErrorCode.FORBIDDEN, "only the owner changes roles")
    if await store.role_of(services.redis, gid, user) is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"{user} is not in the group")
    if role not in ROLES or user == actor:
        raise ImflowError(ErrorCode.BAD_FRAME, "role must be owner, admin or member, for someone else")
    changes = {user: role}
    if role == OWNER:  # one owner: the old one becomes an admin
        changes[actor] = ADMIN
    await store.set_roles(services.redis, gid, changes, owner=user if role == OWNER else None)
    await _record(services, gid, actor, "role", {user: role})
    return RoleSet(gid, user, role)


# -- queries


async def members(services: Services, query: ListMembers) -> GroupMembers:
    """Every member's role, for a member of the group."""
    roles = await store.roles(services.redis, query.gid)
    if query.user not in roles:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no group {query.gid!r} for you")
    return GroupMembers(query.gid, roles)


async def my_groups(services: Services, query: ListGroups) -> MyGroups:
    """The user's groups, by gid."""
    entries = await store.groups_of(services.redis, query.user)
    return MyGroups([GroupSummary(e.gid, group_conversation(e.gid), e.name, e.role) for e in entries])
