"""Accounts, the service: who may use imflow (create, read, list, update, deactivate,
reactivate, tokens), the sign-in check every token goes through, profiles and privacy settings
(docs/protocol.md, "Accounts, contacts, blocking and presence" and "Admin API").

The app's backend registers its users (the admin API, gateway/admin_api.py, or ``imflow
users``); with ``accounts=registered`` (the default) a token counts only for an active account.
With ``accounts=open`` (development, tests) a valid token's user is registered on first sign-in,
and a user without an account counts as active with the default settings. A *deactivated*
account is refused everywhere: its sessions end on every gateway (core/revocation.py), its
tokens and messages to it are refused (``user_deactivated``; core/contacts.py reads the status
in the send check).

Each change takes a typed command and records itself in the archive (``im_account_events``,
core/storage/social_records.py).

Errors (ImflowError): ``bad_frame`` (a bad user id or profile field), ``frame_too_large``
(custom fields past ``profile_custom_max_bytes``), ``not_found`` (no account), ``conflict``
(exists already; deactivated or active already), ``user_deactivated``, ``unknown_user`` (a
token whose user has no account), ``unavailable`` (Redis cannot say, on sign-in).
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import orjson
from redis.exceptions import RedisError

from . import presence, revocation, tokens
from .errors import ErrorCode, ImflowError
from .models import MAX_SAFE_INT, USER_ID_PATTERN
from .storage import accounts as store
from .storage import gateway_events, social_records
from .storage.accounts import ACTIVE, DEACTIVATED, Account

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from .services import Services

DISPLAY_NAME_MAX = 100  # characters
AVATAR_URL_MAX = 2048  # characters
TOKEN_TTL_MAX = 366 * 86_400  # seconds: a token the admin API issues lives at most a year
PAGE_MAX = 1000  # accounts in one listing page
PROFILE_FIELDS = ("display_name", "avatar_url", "custom")
Scalar = str | int | float | bool | None


# -- profile fields: the one validation of the admin API, the CLI and anything else


@dataclass(frozen=True)
class ProfileFields:
    """Profile fields to write: None leaves a field as it is; ``""`` (and ``{}`` for
    ``custom``) clears it. Build it with ``profile_fields`` (which validates)."""

    display_name: str | None = None
    avatar_url: str | None = None
    custom: dict[str, Scalar] | None = None

    def given(self) -> bool:
        return any(value is not None for value in (self.display_name, self.avatar_url, self.custom))

    def stored(self) -> tuple[dict[str, str], list[str]]:
        """(fields to set as the account hash stores them, fields to delete)."""
        custom = None if self.custom is None else orjson.dumps(self.custom).decode() if self.custom else ""
        values = {"display_name": self.display_name, "avatar_url": self.avatar_url, "custom": custom}
        changes = {name: value for name, value in values.items() if value}
        return changes, [name for name, value in values.items() if value == ""]


def _bad(message: str) -> ImflowError:
    return ImflowError(ErrorCode.BAD_FRAME, message)


def require_user_id(user: object) -> str:
    """``user`` if it is a user id (1-64 letters, digits, '_', '.' or '-'), else ``bad_frame``."""
    if not isinstance(user, str) or not USER_ID_PATTERN.fullmatch(user):
        raise _bad(f"invalid user id {user!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return user


def _display_name(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > DISPLAY_NAME_MAX:
        raise _bad(f"display_name is a string of at most {DISPLAY_NAME_MAX} characters (or null)")
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise _bad("display_name may not hold control characters")
    return value


def _avatar_url(value: object) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or len(value) > AVATAR_URL_MAX:
        raise _bad(f"avatar_url is an http(s) URL of at most {AVATAR_URL_MAX} characters (or null)")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError as exc:  # a malformed port or IPv6 address
        raise _bad(f"avatar_url is not a URL: {exc}") from exc
    spaced = any(char.isspace() or unicodedata.category(char) == "Cc" for char in value)
    if parts.scheme.lower() not in ("http", "https") or not host or spaced:
        raise _bad("avatar_url must be an http:// or https:// URL with a host and no spaces")
    return value


def _scalar(value: object) -> bool:
    if value is None or isinstance(value, str | bool):
        return True
    if isinstance(value, int):
        return -MAX_SAFE_INT <= value <= MAX_SAFE_INT  # what every JSON client reads exactly
    return isinstance(value, float) and math.isfinite(value)


def _custom(value: object, max_bytes: int) -> dict[str, Scalar]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("custom is a JSON object (or null)")
    for name, item in value.items():
        if not isinstance(name, str) or not _scalar(item):
            raise _bad(f"custom field {name!r}: values are strings, numbers (integers within 2^53), booleans or null, not nested")
    size = len(orjson.dumps(value))
    if size > max_bytes:
        raise ImflowError(ErrorCode.FRAME_TOO_LARGE, f"custom fields take {size} bytes as JSON; at most {max_bytes}")
    return dict(value)


def profile_fields(data: Mapping[str, Any], custom_max_bytes: int) -> ProfileFields:
    """The profile fields a JSON object gives (``display_name``, ``avatar_url``, ``custom``;
    each optional, null clears it), validated.

    Raises ImflowError ``bad_frame`` for another field, a display name that is not a string of
    at most 100 characters without control characters, an avatar URL that is not an http(s)
    URL of at most 2,048 characters, or custom fields that are not a flat object of strings,
    numbers, booleans and nulls; ``frame_too_large`` for custom fields past ``custom_max_bytes``
    as compact JSON.
    """
    unknown = sorted(set(data) - set(PROFILE_FIELDS))
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(map(repr, unknown))}; a profile has {', '.join(PROFILE_FIELDS)}")
    return ProfileFields(
        _display_name(data["display_name"]) if "display_name" in data else None,
        _avatar_url(data["avatar_url"]) if "avatar_url" in data else None,
        _custom(data["custom"], custom_max_bytes) if "custom" in data else None,
    )


# -- commands and results


@dataclass(frozen=True)
class CreateAccount:
    user: str
    profile: ProfileFields = ProfileFields()


@dataclass(frozen=True)
class GetAccount:
    user: str


@dataclass(frozen=True)
class ListAccounts:
    """A page of accounts in user id order, after the user ``after`` (None: from the first)."""

    after: str | None = None
    limit: int = 100


@dataclass(frozen=True)
class UpdateProfile:
    user: str
    profile: ProfileFields


@dataclass(frozen=True)
class Deactivate:
    user: str


@dataclass(frozen=True)
class Reactivate:
    user: str


@dataclass(frozen=True)
class IssueToken:
    """A token for ``user`` living ``ttl_seconds`` (None: the ``token_ttl_seconds`` setting)."""

    user: str
    ttl_seconds: int | None = None


@dataclass(frozen=True)
class GetProfiles:
    """``user`` asks for the profiles of ``users`` (1-100)."""

    user: str
    users: tuple[str, ...]


@dataclass(frozen=True)
class SetPrivacy:
    """``user`` sets ``dm`` (anyone | contacts) and/or ``presence`` (visible | hidden) on
    connection ``origin`` (its reply answers it; the user's other connections are pushed)."""

    user: str
    dm: str | None = None
    presence: str | None = None
    origin: str = ""


@dataclass(frozen=True)
class Profile:
    """An account as the admin API shows it (docs/protocol.md, "Admin API"); the ``profiles``
    frame shows it without the two times."""

    user: str
    status: str
    display_name: str | None
    avatar_url: str | None
    custom: dict[str, Any]
    created_at_ms: int
    updated_at_ms: int

    @classmethod
    def of(cls, account: Account) -> Profile:
        return cls(account.user, account.status, account.display_name, account.avatar_url, account.custom,
                   account.created_at_ms, account.updated_at_ms)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AccountPage:
    users: list[Profile] = field(default_factory=list)
    next_after: str | None = None  # pass as ``after`` for the next page; None: the last page


@dataclass(frozen=True)
class IssuedToken:
    user: str
    token: str
    expires_at_ms: int


@dataclass(frozen=True)
class Profiles:
    """The profiles asked for, in the order asked (each user once), and the users without an
    account (with ``accounts=open`` there are none: such a user counts as active, unset)."""

    profiles: list[Profile] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    asker: str = ""
    mine: Privacy | None = None  # the asker's own privacy settings, when they asked for themself


@dataclass(frozen=True)
class Privacy:
    """A user's privacy settings: ``dm`` (anyone | contacts), ``presence`` (visible | hidden)."""

    dm: str
    presence: str

    def to_dict(self) -> dict[str, str]:
        return {"dm": self.dm, "presence": self.presence}


@dataclass(frozen=True, slots=True)
class PrivacyChanged:
    """A user's privacy settings changed: for their other connections (the frame ``privacy``)."""

    kind: ClassVar[str] = "privacy"
    privacy: Privacy

    def wire(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.privacy.to_dict()}


# -- the account changes


async def _record(services: Services, account: Account, kind: str) -> None:
    profile = {"display_name": account.display_name, "avatar_url": account.avatar_url, "custom": account.custom}
    await social_records.record_account(services, account.user, kind, profile, services.clock())


def _found(written: store.Written, user: str) -> Account:
    if written.account is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no account {user!r}")
    return written.account


async def create(services: Services, command: CreateAccount) -> Profile:
    """A new active account; ``conflict`` if ``command.user`` has one already."""
    user = require_user_id(command.user)
    changes, _ = command.profile.stored()
    written = await store.create(services.redis, user, changes, services.clock())
    if written.outcome == "conflict":
        raise ImflowError(ErrorCode.CONFLICT, f"{user} has an account already")
    account = _found(written, user)
    await _record(services, account, "created")
    return Profile.of(account)


async def get(services: Services, query: GetAccount) -> Profile:
    """``query.user``'s account; ``not_found`` if none."""
    user = require_user_id(query.user)
    account = await store.get(services.redis, user)
    if account is None:
        raise ImflowError(ErrorCode.NOT_FOUND, f"no account {user!r}")
    return Profile.of(account)


async def list_accounts(services: Services, query: ListAccounts) -> AccountPage:
    """A page of accounts in user id order; ``bad_frame`` for a limit outside 1-1000 or a bad ``after``."""
    if query.after is not None:
        require_user_id(query.after)
    if isinstance(query.limit, bool) or not isinstance(query.limit, int) or not 1 <= query.limit <= PAGE_MAX:
        raise _bad(f"limit is 1-{PAGE_MAX}")
    found, next_after = await store.page(services.redis, query.after, query.limit)
    return AccountPage([Profile.of(account) for account in found], next_after)


async def update(services: Services, command: UpdateProfile) -> Profile:
    """Change the given profile fields (``custom`` is replaced whole); ``not_found`` if no
    account, ``bad_frame`` if no field is given. A deactivated account's profile may change."""
    user = require_user_id(command.user)
    if not command.profile.given():
        raise _bad(f"give at least one of {', '.join(PROFILE_FIELDS)}")
    changes, clear = command.profile.stored()
    written = await store.write(services.redis, user, "present", {**changes, "updated_at_ms": services.clock()}, clear)
    account = _found(written, user)
    await _record(services, account, "updated")
    return Profile.of(account)


async def deactivate(services: Services, command: Deactivate) -> Profile:
    """Deactivate an active account: every session of the user ends on every gateway, their
    tokens and messages to them are refused from now on (``user_deactivated``). ``conflict``
    if deactivated already, ``not_found`` if no account."""
    user = require_user_id(command.user)
    written = await store.write(services.redis, user, ACTIVE, {"status": DEACTIVATED, "updated_at_ms": services.clock()})
    account = _found(written, user)
    # the status first, then the revocation: a session opened in between is refused by the
    # status or ended by the revocation. Repeated on a conflict, so that a crash between the
    # two steps of an earlier call leaves no session open (tokens are refused there anyway).
    await revocation.revoke(services.redis, user, services.clock(), ErrorCode.USER_DEACTIVATED)
    if written.outcome == "conflict":
        raise ImflowError(ErrorCode.CONFLICT, f"{user} is {account.status} already")
    await _record(services, account, "deactivated")
    return Profile.of(account)


async def reactivate(services: Services, command: Reactivate) -> Profile:
    """Make a deactivated account active again; tokens issued before its deactivation stay
    revoked. ``conflict`` if active already, ``not_found`` if no account."""
    user = require_user_id(command.user)
    written = await store.write(services.redis, user, DEACTIVATED, {"status": ACTIVE, "updated_at_ms": services.clock()})
    account = _found(written, user)
    if written.outcome == "conflict":
        raise ImflowError(ErrorCode.CONFLICT, f"{user} is {account.status} already")
    await _record(services, account, "reactivated")
    return Profile.of(account)


async def issue_token(services: Services, command: IssueToken) -> IssuedToken:
    """A token for an active account (with ``accounts=open``, for any user not deactivated).

    Raises ``not_found`` (no account, registered accounts), ``user_deactivated``, or
    ``bad_frame`` for a bad user id or a lifetime outside 1 s - 366 days.
    """
    user = require_user_id(command.user)
    s = services.settings
    ttl = command.ttl_seconds if command.ttl_seconds is not None else s.token_ttl_seconds
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= TOKEN_TTL_MAX:
        raise _bad(f"ttl_seconds is 1-{TOKEN_TTL_MAX}")
    await require_active(services, [user])
    secret = s.secret_key.get_secret_value()
    token = tokens.issue(secret, user, ttl)
    return IssuedToken(user, token, tokens.verify_claims(secret, token).expires_ms)


# -- sign-in and the checks of other services


async def sign_in(services: Services, user: str) -> Profile:
    """The account of ``user`` signing in where accounts are created on first sign-in (open
    accounts; development sign-in): created active if there is none (once, however many sign
    in at the same moment) and recorded. Raises ``user_deactivated`` for a deactivated one."""
    written = await store.create(services.redis, require_user_id(user), {}, services.clock())
    account = _found(written, user)
    if written.outcome == "ok":
        await _record(services, account, "created")
    elif account.status == DEACTIVATED:
        raise ImflowError(ErrorCode.USER_DEACTIVATED, f"{user}'s account is deactivated")
    return Profile.of(account)


async def authenticate(services: Services, token: object) -> tokens.TokenClaims:
    """The claims of a token that may open a session or make a request: valid, not revoked,
    and its user's account active (with ``accounts=open``, created on this first sign-in).

    Raises ImflowError: token_invalid, token_expired, token_revoked; ``unknown_user`` (no
    account, registered accounts); ``user_deactivated``; ``unavailable`` if Redis cannot say.
    """
    claims = await revocation.verify(services.redis, services.settings.secret_key.get_secret_value(), token)
    try:
        if services.settings.accounts == "open":
            await sign_in(services, claims.user)
            return claims
        status = (await store.statuses(services.redis, [claims.user]))[claims.user]
    except (RedisError, OSError) as exc:
        raise ImflowError(ErrorCode.UNAVAILABLE, "cannot check the account now; try again shortly") from exc
    if status is None:
        raise ImflowError(ErrorCode.UNKNOWN_USER, f"{claims.user} has no account; the app registers its users first")
    if status == DEACTIVATED:
        raise ImflowError(ErrorCode.USER_DEACTIVATED, f"{claims.user}'s account is deactivated")
    return claims


async def require_active(services: Services, users: Iterable[str]) -> None:
    """Every one of ``users`` has an active account (with ``accounts=open``, no account counts
    as active), checked in one round trip; else ImflowError for the first that has not:
    ``not_found`` (no account, registered accounts) or ``user_deactivated``."""
    registered = services.settings.accounts == "registered"
    for user, status in (await store.statuses(services.redis, users)).items():
        if status is None and registered:
            raise ImflowError(ErrorCode.NOT_FOUND, f"no user {user!r}")
        if status == DEACTIVATED:
            raise ImflowError(ErrorCode.USER_DEACTIVATED, f"{user}'s account is deactivated")


# -- the client's operations


async def profiles(services: Services, query: GetProfiles) -> Profiles:
    """The profiles of ``query.users`` (each once, in the order asked), in one round trip; the
    asker's own entry also carries their privacy settings (``mine``)."""
    found = await store.accounts_of(services.redis, query.users)
    shown, unknown, mine = [], [], None
    for user, account in found.items():
        if account is None and services.settings.accounts == "open":
            account = Account(user, ACTIVE)  # no account counts as active, nothing set
        if account is None:
            unknown.append(user)
        else:
            shown.append(Profile.of(account))
            if user == query.user:  # only the user sees their own settings (a device reads them so)
                mine = Privacy(account.dm, account.presence)
    return Profiles(shown, unknown, query.user, mine)


async def set_privacy(services: Services, command: SetPrivacy) -> Privacy:
    """Set who may message the user one-to-one (``dm``) and whether they show presence; the
    settings as they are now. The user's other connections are told of a change (a repeat of
    the settings as they are changes nothing and tells no one); switching ``presence``
    tells their watchers how they look now. ``bad_frame`` for a value outside the two of each."""
    changes = {name: value for name, value in (("dm", command.dm), ("presence", command.presence)) if value is not None}
    if not changes:
        raise _bad("give 'dm', 'presence' or both")
    if changes.get("dm", store.ANYONE) not in (store.ANYONE, store.CONTACTS):
        raise _bad("dm is 'anyone' or 'contacts'")
    if changes.get("presence", store.VISIBLE) not in (store.VISIBLE, store.HIDDEN):
        raise _bad("presence is 'visible' or 'hidden'")
    before, after = await store.set_privacy(services.redis, command.user, changes)
    now = Privacy(after.dm, after.presence)
    if (before.dm, before.presence) != (after.dm, after.presence):  # a change, not a repeat
        await gateway_events.notify_user(services.redis, command.user, PrivacyChanged(now), skip=command.origin)
    if before.presence != after.presence or command.presence is not None:
        # a repeat too: watchers may have missed the change's own publish (Redis blipped)
        await presence.visibility_changed(services.redis, command.user)
    return now
