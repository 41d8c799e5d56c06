"""The Redis state of accounts: one hash per user (``keys.account``: status, profile, privacy,
last seen) and the index that lists them (``keys.accounts_index``).

An account *is* a hash with a ``status`` field: presence writes ``last_seen_ms`` on the hash of
whoever goes offline, account or not, so a hash without a status is no account. Conditional
writes (create if absent, change if active ...) are one Lua step each (lua/account_write.lua).

The index is a sorted set whose members all score 0, so Redis keeps them in user id order and
a page is one ``ZRANGEBYLEX`` from where the last one ended (keyset paging, no offsets); the
creation time lives in the hash. It is one key for all users (not in a user's slot), written
after the account's hash: a create that finds the account there already adds it again, so a
retry after a crash between the two completes the listing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import orjson

from . import keys
from .redis_client import text
from .scripts import script

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from redis.asyncio import Redis

ACTIVE: Final = "active"
DEACTIVATED: Final = "deactivated"
ANYONE, CONTACTS = "anyone", "contacts"  # the ``dm`` setting: who may start a one-to-one conversation
VISIBLE, HIDDEN = "visible", "hidden"  # the ``presence`` setting
Expect = Literal["absent", "present", "active", "deactivated"]


@dataclass(frozen=True)
class Account:
    """One account as stored: ``status`` (active | deactivated); ``display_name`` and
    ``avatar_url`` (None: unset); ``custom`` (the flat JSON object of custom fields, {} when
    unset); creation and last profile change (Unix ms); the privacy settings ``dm`` (anyone |
    contacts) and ``presence`` (visible | hidden); ``last_seen_ms`` (None: never offline yet)."""

    user: str
    status: str
    display_name: str | None = None
    avatar_url: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)
    created_at_ms: int = 0
    updated_at_ms: int = 0
    dm: str = ANYONE
    presence: str = VISIBLE
    last_seen_ms: int | None = None

    @classmethod
    def decoded(cls, user: str, stored: Mapping[bytes | str, bytes | str]) -> Account | None:
        """The account a hash holds (HGETALL's reply), or None if it holds none (no status)."""
        fields = {text(name): text(value) for name, value in stored.items()}
        if "status" not in fields:
            return None
        last_seen = fields.get("last_seen_ms")
        return cls(
            user, fields["status"], fields.get("display_name") or None, fields.get("avatar_url") or None,
            orjson.loads(fields["custom"]) if fields.get("custom") else {},
            int(fields.get("created_at_ms", 0)), int(fields.get("updated_at_ms", 0)),
            fields.get("dm") or ANYONE, fields.get("presence") or VISIBLE, int(last_seen) if last_seen else None,
        )


@dataclass(frozen=True)
class Privacy:
    """A user's privacy settings: ``dm`` (anyone | contacts), ``presence`` (visible | hidden)."""

    dm: str = ANYONE
    presence: str = VISIBLE

    @classmethod
    def decoded(cls, stored: list[bytes | None]) -> Privacy:
        dm, presence = stored
        return cls(text(dm) if dm else ANYONE, text(presence) if presence else VISIBLE)


PRIVACY = ("dm", "presence")  # the fields of Privacy, as the account hash names them


@dataclass(frozen=True)
class Written:
    """What a conditional write found: ``ok`` (written; ``account`` as it is now), ``not_found``
    (no account; ``account`` None) or ``conflict`` (``account`` as it is, unchanged)."""

    outcome: Literal["ok", "not_found", "conflict"]
    account: Account | None


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def write(redis: Redis, user: str, expect: Expect, changes: Mapping[str, str | int], clear: Iterable[str] = ()) -> Written:
    """Set the fields ``changes`` and delete the fields ``clear`` of ``user``'s account hash, in
    one step, if the account is as ``expect`` says (see lua/account_write.lua)."""
    flat = [part for name, value in changes.items() for part in (name, value)]
    found = await script(redis, "account_write")(keys=[keys.account(user)], args=[expect, len(changes), *flat, *clear])
    outcome = text(found[0])
    if outcome == "not_found":
        return Written("not_found", None)
    return Written("ok" if outcome == "ok" else "conflict", Account.decoded(user, _pairs(found[1:])))


async def create(redis: Redis, user: str, profile: Mapping[str, str], now_ms: int) -> Written:
    """Create ``user``'s account, active, with these profile fields (their stored text), unless
    it exists (``conflict``, nothing changed); either way it is in the index afterwards."""
    changes: dict[str, str | int] = {"status": ACTIVE, "created_at_ms": now_ms, "updated_at_ms": now_ms, **profile}
    written = await write(redis, user, "absent", changes)
    await redis.zadd(keys.accounts_index(), {user: 0}, nx=True)
    return written


async def get(redis: Redis, user: str) -> Account | None:
    """``user``'s account, or None if there is none."""
    return Account.decoded(user, await redis.hgetall(keys.account(user)))


async def accounts_of(redis: Redis, users: Iterable[str]) -> dict[str, Account | None]:
    """The account of each user (None: none), in one round trip."""
    wanted = list(dict.fromkeys(users))
    async with redis.pipeline(transaction=False) as pipe:
        for user in wanted:
            pipe.hgetall(keys.account(user))
        found = await pipe.execute()
    return {user: Account.decoded(user, stored) for user, stored in zip(wanted, found, strict=True)}


async def statuses(redis: Redis, users: Iterable[str]) -> dict[str, str | None]:
    """The status of each user's account (None: no account), in one round trip."""
    wanted = list(dict.fromkeys(users))
    async with redis.pipeline(transaction=False) as pipe:
        for user in wanted:
            pipe.hget(keys.account(user), "status")
        found = await pipe.execute()
    return {user: text(status) if status is not None else None for user, status in zip(wanted, found, strict=True)}


async def page(redis: Redis, after: str | None, limit: int) -> tuple[list[Account], str | None]:
    """Up to ``limit`` accounts in user id order, after the user ``after`` (None: from the
    first), and the user to pass as ``after`` for the next page (None: this is the last)."""
    start = f"({after}" if after is not None else "-"
    names = [text(name) for name in await redis.zrangebylex(keys.accounts_index(), start, "+", start=0, num=limit + 1)]
    more = len(names) > limit
    names = names[:limit]
    found = await accounts_of(redis, names)
    return [account for account in found.values() if account is not None], names[-1] if more else None


async def set_privacy(redis: Redis, user: str, changes: Mapping[str, str]) -> tuple[Privacy, Privacy]:
    """Set ``dm`` and/or ``presence`` on ``user``'s account hash; the two settings before and
    after, read in the same transaction."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hmget(keys.account(user), list(PRIVACY))
        for name, value in changes.items():
            pipe.hset(keys.account(user), name, value)
        pipe.hmget(keys.account(user), list(PRIVACY))
        replies = await pipe.execute()
    before, after = replies[0], replies[-1]
    return Privacy.decoded(before), Privacy.decoded(after)


async def set_last_seen(redis: Redis, user: str, ms: int) -> None:
    """Record that ``user`` was last online at ``ms`` (Unix ms)."""
    await redis.hset(keys.account(user), "last_seen_ms", ms)
